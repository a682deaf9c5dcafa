"""What the bottleneck adapters share (Houlsby, Pfeiffer, parallel, Compacter): the bottleneck, where it goes and
how it is prepared (export and reload are the default's: the trained tensors, on a base prepared the same way).

A bottleneck adapter is ``A(z) = s · W_up f(W_down z)`` with W_down: d → m, W_up: m → d (each with a bias, zero at
init), close to zero at init so that the adapted model starts at (or next to) the base model (Houlsby et al. 2019,
§2.1: "near-identity initialisation"); each method draws W_down, W_up as its reference code does
(:func:`linear_bottleneck`'s ``init``). It is inserted at *sub-layer positions*, not on linear modules:

- **series** (Houlsby, Compacter++): ``h ← h + A(h)`` on the output h of a sub-layer's last projection (the
  attention output projection W_o, or the FFN's down projection), before the residual connection and norm;
- **after the FFN block** (Pfeiffer, as AdapterHub's Pfeiffer / ``seq_bn`` configuration computes it:
  original_ln_before, residual_before_ln, original_ln_after): with h the FFN's output and x its residual input,
  the adapter reads the block's normalised output y = LN(h + x), its output is added to h (the residual taken
  before the norm), then the residual x and the *same* norm are applied again: ``out = LN(h + x + A(LN(h + x)))``.
  In a pre-norm model (LLaMA, GPT-2) there is no norm after the block (AdapterHub passes none), so with
  z = x + h, the layer's output: ``out = z + A(z)``;
- **parallel** (He et al. 2022, §3): ``h ← h + A(x)`` where x is the sub-layer's *input* (what its first
  projection reads: W_q or the fused QKV for attention, the up projection for the FFN) and h its output.

The positions are found through the role map (:mod:`efficientft.models.roles`): ``attn`` = (q, o), ``ffn`` =
(ffn_up, ffn_down) of each layer, so BERT, LLaMA and GPT-2 layouts work alike; the task head never gets an adapter.
The wrapped projections stay frozen; the adapters (and the head) train. Adapters have no W_v role, so λ ≠ 1 is
refused, and ``--targets`` unless it is the default (``qv``, which then means nothing here): both by the declared
capabilities (``targets="positions"``, ``v_role=False``), before a model loads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import replace_module, weight_shape
from ..models.roles import Target, family_of, linear_modules, role_of
from .args import NON_NEGATIVE_INT, POSITIVE_INT, MethodArgs, arg, choice
from .base import Context, Method

# gelu_new: GELU's tanh approximation (transformers' name; the Compacter++ configuration's non_linearity)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                                                   "identity": nn.Identity,
                                                   "gelu_new": functools.partial(nn.GELU, approximate="tanh")}
POSITIONS = ("attn", "ffn")
# The sub-layer's first projection (reads its input x) and last one (writes its output h), by role.
_ENDS = {"attn": ("q", "o"), "ffn": ("ffn_up", "ffn_down")}


NONLINEARITY = choice(*ACTIVATIONS)


@dataclass
class BottleneckArgs(MethodArgs):
    bottleneck: int = arg(0, NON_NEGATIVE_INT, note="0: d // reduction_factor")  # m
    reduction_factor: int = arg(16, POSITIVE_INT)  # d / m when bottleneck is 0 (Pfeiffer et al. 2021 use 16)
    nonlinearity: str = arg("relu", NONLINEARITY)

    def size(self, d: int) -> int:
        return self.bottleneck or max(1, d // self.reduction_factor)


def check_positions(value: str) -> tuple[str, ...]:
    """``attn``, ``ffn`` or ``attn,ffn`` into a tuple in that order (ValueError naming what is accepted)."""
    items = [s.strip() for s in str(value).split(",") if s.strip()]
    if not items or any(i not in POSITIONS for i in items) or len(set(items)) != len(items):
        raise ValueError(f"positions must be attn, ffn or attn,ffn, got {value!r}.")
    return tuple(p for p in POSITIONS if p in items)


class Bottleneck(nn.Module):
    """``s · up(f(down(z)))``; ``up`` starts at zero, so the adapter adds nothing at init."""

    def __init__(self, down: nn.Module, up: nn.Module, nonlinearity: str, scale: float = 1.0) -> None:
        super().__init__()
        self.down, self.act, self.up = down, ACTIVATIONS[nonlinearity](), up
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(z)))
        return out * self.scale if self.scale != 1.0 else out


def linear_bottleneck(d: int, m: int, nonlinearity: str, like: torch.Tensor, scale: float = 1.0,
                      init: Callable[[nn.Linear, nn.Linear], None] | None = None) -> Bottleneck:
    """Plain linear W_down, W_up with zero biases; ``init(down, up)`` draws the weights (each method's reference
    initialisation), by default W_down ~ N(0, 10⁻²), W_up = 0."""
    down = nn.Linear(d, m, dtype=like.dtype, device=like.device)
    up = nn.Linear(m, d, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        down.bias.zero_()
        up.bias.zero_()
        if init is not None:
            init(down, up)
        else:
            nn.init.normal_(down.weight, std=1e-2)
            up.weight.zero_()
    return Bottleneck(down, up, nonlinearity, scale)


class SeriesAdapter(nn.Module):
    """A projection followed by an adapter on its output: ``h + A(h)``."""

    def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = self.base(*args, **kwargs)
        return h + self.adapter(h.to(_dtype(self.adapter))).to(h.dtype)


class NormedSumAdapter(nn.Module):
    """The norm that closes a post-norm FFN block, around a Pfeiffer adapter: ``LN(s + A(LN(s)))``, s = h + x."""

    def __init__(self, base: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        y = self.base(s)
        return self.base(s + self.adapter(y.to(_dtype(self.adapter))).to(s.dtype))


def _add_to_layer_output(layer: nn.Module, args: Any, out: Any) -> Any:  # noqa: ARG001 - a forward hook
    """A pre-norm layer's output z (its residual stream after the FFN) becomes z + A(z)."""
    z = out[0] if isinstance(out, tuple) else out
    z = z + layer.adapter(z.to(_dtype(layer.adapter))).to(z.dtype)
    return (z, *out[1:]) if isinstance(out, tuple) else z


# The norm that closes the FFN block of a post-norm family, from the FFN's last projection's name.
_FFN_NORM = {"bert": lambda last: last.rpartition(".")[0] + ".LayerNorm",
             "distilbert": lambda last: f"{layer_of(last)}.output_layer_norm"}


def place_after_ffn(model: nn.Module, last: str, adapter: nn.Module) -> None:
    """Put a Pfeiffer adapter after the FFN block whose last projection is ``last`` (see the module's docstring):
    around the block's closing norm in a post-norm model, on the layer's output in a pre-norm one."""
    family = family_of(model)
    norm = _FFN_NORM[family.name](last) if family is not None and family.name in _FFN_NORM else None
    names = dict(model.named_modules())
    if norm is not None and norm in names:
        replace_module(model, norm, NormedSumAdapter(names[norm], adapter))
        return
    layer = model.get_submodule(layer_of(last))
    layer.add_module("adapter", adapter)
    layer.register_forward_hook(_add_to_layer_output)


class _Slot:
    """The input of a sub-layer, passed from its first projection to its last (a plain object: no parameters)."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None


class InputTap(nn.Module):
    """A sub-layer's first projection, unchanged, that remembers its input for the parallel adapter."""

    def __init__(self, base: nn.Module, slot: _Slot) -> None:
        super().__init__()
        self.base, self._slot = base, slot

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._slot.x = x
        return self.base(x, *args, **kwargs)


class ParallelAdapter(nn.Module):
    """A sub-layer's last projection plus the adapter of the sub-layer's input: ``h + A(x)`` (He et al. 2022)."""

    def __init__(self, base: nn.Module, adapter: nn.Module, slot: _Slot) -> None:
        super().__init__()
        self.base, self.adapter, self._slot = base, adapter, slot

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = self.base(*args, **kwargs)
        x, self._slot.x = self._slot.x, None
        if x is None:
            raise RuntimeError("parallel adapter: the sub-layer's first projection did not run before its last")
        return h + self.adapter(x.to(_dtype(self.adapter))).to(h.dtype)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def float_like(model: nn.Module) -> torch.Tensor:
    """A floating-point parameter of the model: adapters take its dtype and device (a 4-bit layer's weight is
    packed bytes, so the wrapped projection's own weight cannot say)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p
    raise ConfigError("the model has no floating-point parameter to take the adapters' dtype from.")


def sublayers(model: nn.Module, method: str, position: str) -> list[tuple[str, str]]:
    """(first, last) projection names of the ``position`` sub-layer of every transformer layer, in layer order.

    The first projection of attention is W_q (BERT, LLaMA) or the fused QKV (GPT-2 ``c_attn``); of the FFN the up
    projection; the last is W_o or the down projection. Layers are told apart by their index in the module name.
    """
    family = family_of(model)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise ConfigError(f"method {method!r} finds its sub-layer positions through the role map, and model type "
                          f"{model_type!r} has none (bert, llama, gpt2 families and their relatives have).")
    first_role, last_role = _ENDS[position]
    firsts: dict[str, str] = {}
    lasts: dict[str, str] = {}
    for name in linear_modules(model):
        role = role_of(family, name)
        fused = any(re.search(rf"(^|\.){p}$", name) for p in family.fused)
        layer = layer_of(name)
        if layer is None:
            continue
        if role == first_role or (position == "attn" and fused):  # GPT-2's c_attn reads the attention input
            firsts.setdefault(layer, name)
        if role == last_role:
            lasts[layer] = name
    pairs = [(firsts[k], lasts[k]) for k in lasts if k in firsts]
    if not pairs:
        raise ConfigError(f"method {method!r}: no {position} sub-layer found in this {family.name}-family model.")
    return pairs


def layer_of(name: str) -> str | None:
    m = re.match(r"(.*?\.\d+)\.", name)
    return m.group(1) if m else None


class AdapterMethod(Method):
    """The shared prepare of the bottleneck adapters; each method says where (``series`` / ``parallel`` and which
    positions) and how its bottleneck is built (:meth:`build`)."""

    parallel: ClassVar[bool] = False
    after_ffn_block: ClassVar[bool] = False  # Pfeiffer: after the FFN block's residual and norm (place_after_ffn)

    def positions(self) -> tuple[str, ...]:
        raise NotImplementedError

    def build(self, d: int, like: torch.Tensor) -> nn.Module:
        """The adapter of one position (hidden size d)."""
        return linear_bottleneck(d, self.args.size(d), self.args.nonlinearity, like)

    def extra_trainable(self, model: nn.Module) -> list[str]:
        """Parameter names besides the adapters and the head that train (Houlsby's layer norms)."""
        return []

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.targets, self.ctx = [], ctx  # no projection is adapted: no parameter carries a role for λ
        for p in model.parameters():
            p.requires_grad = False
        like = float_like(model)
        for position in self.positions():
            for first, last in sublayers(model, self.name, position):
                base_last = model.get_submodule(last)
                d = weight_shape(base_last)[0]
                adapter = self.build(d, like)
                if self.after_ffn_block and position == "ffn":
                    place_after_ffn(model, last, adapter)
                elif self.parallel:
                    slot = _Slot()
                    replace_module(model, first, InputTap(model.get_submodule(first), slot))
                    replace_module(model, last, ParallelAdapter(base_last, adapter, slot))
                else:
                    replace_module(model, last, SeriesAdapter(base_last, adapter))
        names = set(self.extra_trainable(model))
        for n, p in model.named_parameters():
            if n in names or ".adapter." in f".{n}" or any(n.startswith(h + ".") for h in ctx.heads):
                p.requires_grad = True
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        raise ConfigError(f"method {self.name!r} defines no merge: its adapters apply a non-linearity f between "
                          "W_down and W_up, so they cannot be folded into the frozen weights; export them instead.")

