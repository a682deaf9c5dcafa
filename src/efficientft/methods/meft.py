"""MEFT, memory-efficient fine-tuning (Liao, Tan & Monz 2023, "Make Pre-trained Model Reversible: From Parameter to
Memory Efficient Fine-Tuning", NeurIPS 2023, arXiv 2306.00477; reference code github.com/BaohaoLiao/mefts,
``models/modeling_revbert.py`` and ``scripts/bert_glue.sh``).

Adapters are inserted so that the frozen encoder becomes a reversible network of two streams, both started at the
embeddings' output (h¹₀ = h²₀ = h₀), each layer n computing (the reversible layer of the paper's Figure 4, as the
reference's ``RevBertLayer.forward`` computes it)::

    h¹ₙ = λ h¹ₙ₋₁ + F(h²ₙ₋₁),      h²ₙ = β h²ₙ₋₁ + G(h¹ₙ)

and so invertible: h²ₙ₋₁ = (h²ₙ − G(h¹ₙ)) / β, h¹ₙ₋₁ = (h¹ₙ − F(h²ₙ₋₁)) / λ. The encoder's output is the mean of the
two streams, (h¹_N + h²_N) / 2, as the reference's ``RevBertEncoder`` takes it. The three architectures
(``variant``; the reference's ``f_arch`` and its ``x1_factor`` λ, ``x2_factor`` β):

- **meft1** (the default, as the reference script's and ``run_glue.py``'s): F = the pre-trained layer with an
  adapter parallel to its FFN (added to the FFN's output before the residual and LayerNorm), G = an adapter;
  λ = 0.1, β = 1; the streams are swapped after each layer, so at initialisation (G ≈ 0, λ → 0) they carry the
  pre-trained hidden states (hₙ₋₁, hₙ): the pre-trained model's starting point, up to λ's leak;
- **meft2**: F = an adapter, G = the layer (with the FFN-parallel adapter); λ = 1, β = 0.1; swapped;
- **meft3**: F = the attention block with an adapter in series on its output (before residual and LayerNorm), G = the
  FFN block with the parallel adapter; λ = β = 0.1; not swapped.

An adapter is the reference's ``Adapter``: W_up dropout(act(W_down z)) with the model's dropout rate, bottleneck 8
(the script's ``DIM``), W_down, W_up ~ N(0, 0.02²) (BERT's initializer range), biases zero; only the adapters and
the task head train (the reference also unfreezes the embeddings' LayerNorm to trigger its backward and drops that
gradient: here the backward takes the adapters as inputs, so it runs without that).

The backward pass stores no activation inside the encoder: the forward keeps only the last layer's output (and the
RNG states that drew each layer's dropout masks), and the backward rebuilds each layer's input from its output with
the inverse above, recomputes F and G there, and back-propagates through them one layer at a time (the reference's
``RevBackProp``): the activation memory of the encoder does not grow with depth. The gradients are those of the
forward up to the reconstruction's rounding, amplified by 1/λ and 1/β per layer. One deviation from the reference,
numerical only: the two streams are carried in float64 (only their element-wise sums and scalings run there; F and
G run in the model's dtype, and the output returns to it), so that rebuilding an input gives F and G back the very
values the forward gave them. Carried in fp32, as the reference does, MiniLM's bottom adapters' gradients (MEFT1,
6 layers) are 2.3e-2 off autograd's; in float64 5.9e-4; on 4 tiny layers 5.9e-5 → 4.3e-7 (MEFT3, which divides by
λβ = 0.01 a layer: 0.26 → 7.8e-5). The stored output costs twice the bytes, still one layer's. The reference script
trains in fp32 (``FP16=false``) with every layer reversible (``REVLAYERS=12``; fewer, the rest with vanilla
gradients, is the paper's Figure 7 setting, not reproduced here). Under autocast the recomputation runs under the forward's autocast
state; the error grows with depth (bf16, 6 tiny layers: 1.1e-3 relative). Without gradients (evaluation) the layers
run as a plain forward.

Capabilities: BERT-family post-norm encoders (layers with ``attention``, ``intermediate``, ``output``, as the
reference's ``RevBertLayer``; BERT, RoBERTa, MiniLM); a decoder's layer cache and a pre-norm layer are not made
reversible here (the reference code has BERT only), so LLaMA and GPT-2 are refused in one line. Sub-layer positions,
no W_v parameter (the strategy's λ ≠ 1 is refused; it is not MEFT's λ), no merge (two streams are not the plain
model), our export format, no quantized base, no gradient checkpointing (the reversible backward already recomputes),
classification only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import replace_module
from ..models.roles import Target
from . import register
from ._adapters import ACTIVATIONS, NONLINEARITY, float_like, linear_bottleneck
from ._inject import freeze_but_heads
from .args import OPTIONAL_POSITIVE, POSITIVE, POSITIVE_INT, MethodArgs, arg, choice
from .base import Context, Method
from .capabilities import Capabilities

# variant: (λ, β), the reference script's FACTOR1, FACTOR2 for each
VARIANTS = {"meft1": (0.1, 1.0), "meft2": (1.0, 0.1), "meft3": (0.1, 0.1)}
# The streams' dtype: only element-wise sums and scalings run in it (F and G run in the model's dtype), so that
# rebuilding a layer's input feeds F and G the very values the forward fed them (see the module's docstring)
STREAM = torch.float64
INIT_STD = 0.02  # BERT's initializer_range, which the reference's _init_weights draws the adapters from


@dataclass
class MEFTArgs(MethodArgs):
    variant: str = arg("meft1", choice(*VARIANTS))  # the paper's MEFT1, MEFT2, MEFT3
    bottleneck: int = arg(8, POSITIVE_INT)  # the adapters' width (the reference script's DIM)
    lam: float | None = arg(None, OPTIONAL_POSITIVE, note="none: the variant's")  # λ, the scale of h¹ₙ₋₁
    beta: float | None = arg(None, OPTIONAL_POSITIVE, note="none: the variant's")  # β, the scale of h²ₙ₋₁
    nonlinearity: str = arg("gelu", NONLINEARITY)  # the reference uses the model's hidden_act (BERT: gelu)
    init_std: float = arg(INIT_STD, POSITIVE)  # W_down, W_up ~ N(0, init_std²)

    def factors(self) -> tuple[float, float]:
        lam, beta = VARIANTS[self.variant]
        return (lam if self.lam is None else self.lam), (beta if self.beta is None else self.beta)


def _adapter(d: int, args: MEFTArgs, dropout: float, like: torch.Tensor) -> nn.Module:
    """The reference's ``Adapter``: W_up dropout(act(W_down z)), both weights ~ N(0, σ²), zero biases."""

    def init(down: nn.Linear, up: nn.Linear) -> None:
        nn.init.normal_(down.weight, std=args.init_std)
        nn.init.normal_(up.weight, std=args.init_std)

    adapter = linear_bottleneck(d, args.bottleneck, args.nonlinearity, like, init=init)
    adapter.act = nn.Sequential(ACTIVATIONS[args.nonlinearity](), nn.Dropout(dropout))  # no parameters: names stay
    return adapter


def _parallel_ffn(adapter: nn.Module, module: nn.Module, args: tuple) -> tuple:  # noqa: ARG001 - a pre-hook
    """BertOutput(h, x) computes LN(dropout(W h) + x); given x + A(x) it computes the reference's
    LN(dropout(W h) + A(x) + x): the adapter parallel to the FFN, before the residual and the norm."""
    h, x, *rest = args
    return (h, x + adapter(x), *rest)


def _series(adapter: nn.Module, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:  # noqa: ARG001
    """The attention output's dropout(W_o z) becomes o + A(o), before the residual and the norm (MEFT3)."""
    return out + adapter(out)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class ReversibleEncoder(nn.Module):
    """The encoder's layers as MEFT's reversible two-stream network (the layers themselves are the base's)."""

    def __init__(self, base: nn.Module, variant: str, lam: float, beta: float) -> None:
        super().__init__()
        self.layer = base.layer
        self.config = getattr(base, "config", None)
        self.variant, self.lam, self.beta = variant, lam, beta
        self.swap = variant != "meft3"
        self.reversible = True  # False: plain autograd through the same forward (the tests compare the two)

    def F(self, i: int, x: torch.Tensor, mask: Any) -> torch.Tensor:  # noqa: N802 - the paper's name
        layer = self.layer[i]
        if self.variant == "meft1":
            return _first(layer(x, mask))
        if self.variant == "meft2":
            return layer.rev_adapter(x)
        return _first(layer.attention(x, mask))

    def G(self, i: int, x: torch.Tensor, mask: Any) -> torch.Tensor:  # noqa: N802
        layer = self.layer[i]
        if self.variant == "meft1":
            return layer.rev_adapter(x)
        if self.variant == "meft2":
            return _first(layer(x, mask))
        return layer.feed_forward_chunk(x)

    def run(self, x: torch.Tensor, mask: Any, dtype: torch.dtype, rng: list | None = None) -> torch.Tensor:
        """All layers on the stacked streams [h¹; h²] (in STREAM, F and G in ``dtype``); ``rng`` (a list) receives
        each F's and G's RNG state."""
        for i in range(len(self.layer)):
            x1, x2 = x.chunk(2, dim=-1)
            if rng is not None:
                rng.append(_rng_state(x))
            y1 = self.lam * x1 + self.F(i, x2.to(dtype), mask).to(x.dtype)
            if rng is not None:
                rng.append(_rng_state(x))
            y2 = self.beta * x2 + self.G(i, y1.to(dtype), mask).to(x.dtype)
            x = torch.cat([y2, y1] if self.swap else [y1, y2], dim=-1)
        return x

    def invert(self, i: int, y: torch.Tensor, dy: torch.Tensor, mask: Any, dtype: torch.dtype, rng: list,
               autocast: tuple, params: list[nn.Parameter], grads: list[torch.Tensor | None]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's input and its gradient from its output y and the output's gradient dy (F and G recomputed under
        the forward's RNG states ``rng`` and ``autocast``); the parameters' gradients are added into ``grads``."""
        y1, y2 = y.chunk(2, dim=-1)
        dy1, dy2 = dy.chunk(2, dim=-1)
        if self.swap:
            (y1, y2), (dy1, dy2) = (y2, y1), (dy2, dy1)
        def recompute(fn: Any, x: torch.Tensor, state: Any, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """fn(x) recomputed under the forward's RNG state, its parameters' gradients for ``dout`` added into
            ``grads``; returns fn(x) and the gradient with respect to x (both no longer part of a graph)."""
            with torch.enable_grad():
                u = x.to(dtype).detach().requires_grad_(True)
                with _replay(state, autocast, y):
                    out = fn(i, u, mask)
                d = torch.autograd.grad(out, [u, *params], dout.to(out.dtype), allow_unused=True)
            _accumulate(grads, d[1:])
            return out.detach(), d[0]

        g, dg = recompute(self.G, y1, rng[1], dy2)
        with torch.no_grad():
            x2 = (y2 - g.to(y.dtype)) / self.beta
            dy1 = dy1 + dg.to(dy.dtype)
        del g, dg
        f, df = recompute(self.F, x2, rng[0], dy1)
        with torch.no_grad():
            x1 = (y1 - f.to(y.dtype)) / self.lam
            dx1 = self.lam * dy1
            dx2 = self.beta * dy2 + df.to(dy.dtype)
        return torch.cat([x1, x2], dim=-1), torch.cat([dx1, dx2], dim=-1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions as Output

        dtype = hidden_states.dtype
        stream = torch.float32 if hidden_states.device.type == "mps" else STREAM  # MPS has no float64
        x = torch.cat([hidden_states, hidden_states], dim=-1).to(stream)
        params = [p for p in self.parameters() if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (params or hidden_states.requires_grad):
            y = _ReversibleBackprop.apply(self, attention_mask, dtype, x, *params)
        else:
            y = self.run(x, attention_mask, dtype)
        y1, y2 = y.chunk(2, dim=-1)
        return Output(last_hidden_state=((y1 + y2) / 2).to(dtype))


def _rng_state(like: torch.Tensor) -> tuple:
    cuda = torch.cuda.get_rng_state(like.device) if like.is_cuda else None
    return torch.get_rng_state(), cuda


def _autocast_state(like: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    kind = like.device.type
    return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


@contextlib.contextmanager
def _replay(state: tuple, autocast: tuple, like: torch.Tensor) -> Iterator[None]:
    """Recompute as the forward computed: under its RNG state (the same dropout masks) and its autocast (the same
    rounding), leaving the run's RNG as it was."""
    kind, enabled, dtype = autocast
    with torch.random.fork_rng(devices=[like.device] if like.is_cuda else []), \
            torch.autocast(kind, dtype=dtype, enabled=enabled):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], like.device)
        yield


def _accumulate(grads: list[torch.Tensor | None], new: tuple) -> None:
    for k, g in enumerate(new):
        if g is not None:
            grads[k] = g if grads[k] is None else grads[k] + g


class _ReversibleBackprop(torch.autograd.Function):
    """Forward without a graph, keeping only the output; backward layer by layer from the output (RevBackProp)."""

    @staticmethod
    def forward(ctx: Any, encoder: ReversibleEncoder, mask: Any, dtype: torch.dtype, x: torch.Tensor,
                *params: nn.Parameter) -> Any:
        rng: list = []
        y = encoder.run(x, mask, dtype, rng)
        ctx.encoder, ctx.mask, ctx.dtype, ctx.rng, ctx.autocast = encoder, mask, dtype, rng, _autocast_state(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:
        (y,) = ctx.saved_tensors
        encoder = ctx.encoder
        params = [p for p in encoder.parameters() if p.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(params)
        for i in reversed(range(len(encoder.layer))):
            y, dy = encoder.invert(i, y, dy, ctx.mask, ctx.dtype, ctx.rng[2 * i: 2 * i + 2], ctx.autocast, params,
                                   grads)
        return (None, None, None, dy, *grads)


def _encoder_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of a BERT-family encoder (``layer``: post-norm layers with ``attention``,
    ``intermediate`` and ``output``), or a ConfigError naming what MEFT can make reversible."""
    for name, m in model.named_modules():
        layers = getattr(m, "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(
                all(hasattr(layer, a) for a in ("attention", "intermediate", "output", "feed_forward_chunk"))
                for layer in layers):
            return name, m
    raise ConfigError(f"method 'meft' makes BERT-family encoders reversible (post-norm layers with attention, "
                      f"intermediate and output blocks, as the reference's RevBertLayer); "
                      f"{type(model).__name__} has none (a decoder's cached, pre-norm layers are not supported): "
                      "use a BERT, RoBERTa or MiniLM model, or another method.")


@register("meft")
class MEFT(Method):
    summary = ("MEFT (Liao et al. 2023): adapters make the frozen encoder a reversible two-stream network; backward "
               "rebuilds each layer's input instead of storing activations")
    Args = MEFTArgs
    capabilities = Capabilities(targets="positions", v_role=False, generation=False, export="efficientft",
                                gradient_checkpointing=False,
                                gradient_checkpointing_reason="its reversible backward already recomputes every "
                                "layer and stores no activation",
                                quantized_base_reason="its reversible backward divides by λ and β, which a "
                                "quantized layer's rounding would not survive, and it has not been tested there")
    lr_prior = (1e-4, 3e-3)  # the reference script searches 5e-4..8e-4

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        # LLaMA and GPT-2 are refused: their layers are pre-norm decoder layers, not the reference's RevBertLayer
        return {"bottleneck": 4} if arch == "bert" else None

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.targets, self.ctx = [], ctx
        name, encoder = _encoder_of(model)
        freeze_but_heads(model, ctx.heads)
        like = float_like(model)
        cfg = model.config
        d = int(cfg.hidden_size)
        dropout = float(getattr(cfg, "hidden_dropout_prob", 0.0) or 0.0)
        a = self.args
        for layer in encoder.layer:
            layer.ffn_adapter = _adapter(d, a, dropout, like)
            layer.output.register_forward_pre_hook(functools.partial(_parallel_ffn, layer.ffn_adapter))
            if a.variant == "meft3":
                layer.attn_adapter = _adapter(d, a, dropout, like)
                layer.attention.output.dropout.register_forward_hook(functools.partial(_series, layer.attn_adapter))
            else:
                layer.rev_adapter = _adapter(d, a, dropout, like)
        lam, beta = a.factors()
        replace_module(model, name, ReversibleEncoder(encoder, a.variant, lam, beta))
        return model
