"""SIFT, Sparse Increment Fine-Tuning (Song et al., ICML 2024, arXiv 2312.11875).

The fine-tuned weights are θ_0 + δ with a sparse increment δ: of each targeted weight W (m × n) only
k = ⌈ρ·m·n⌉ entries train. They are chosen once, before training, as the entries with the largest |∂L/∂W| on
the first batch(es) of training data: the paper's gradient-based selection, motivated by its finding that the
gradient of a pre-trained model is quasi-sparse (a few components carry most of its norm). The sparse rate ρ is
a hyper-parameter (``sparse_rate``; the paper uses about 1%, 0.8% for RoBERTa-large on GLUE), not the 20% the
reference benchmark hard-coded (DESIGN.md, pitfalls).

How it is done here: the increment is a trainable vector of k values at fixed (row, column) positions, written
over the frozen pretrained weight in the forward pass. The optimizer only ever sees those k values, so after
every step exactly k entries of each targeted weight differ from the pretrained ones and every other entry is
bit-identical to it, with AdamW's momentum and decoupled weight decay too (masking the gradient of a dense weight
would not hold: weight decay moves every entry). Weight decay acts on the increment, i.e. pulls a weight back
towards its pretrained value, as weight decay on LoRA's factors does. The targeted modules' biases stay frozen;
the task head trains fully. On GPT-2's fused ``c_attn`` each chosen role (Q, V) gets its own k entries within its
rows, under ``sparse.<role>``, so the λ strategy finds W_v's values and the K rows never change.

Export is our own safetensors file (indices and values, and the head); :meth:`Sift.merge` writes the increments
into the weights, giving a plain Hugging Face model.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.fused import is_conv1d, out_major_weight
from ..models.roles import Target
from ..schema import Rule
from ..strategy import Strategy
from . import register
from ._inject import WrapsTargets
from .args import POSITIVE_INT, MethodArgs, arg
from .base import TRAINABLE_FILE, Context
from .capabilities import Capabilities


@dataclass
class SiftArgs(MethodArgs):
    sparse_rate: float = arg(0.01, Rule("float", 0, 1, low_open=True), note="the paper uses about 0.01")  # ρ: the fraction of each targeted weight's entries that trains
    select_batches: int = arg(1, POSITIVE_INT)  # training batches whose summed gradient chooses the entries (the reference: 1)


class SparseIncrement(nn.Module):
    """k trainable values at fixed positions ``index`` = (rows, cols) of one weight, within rows [a, z)."""

    def __init__(self, rows: tuple[int, int], d_in: int, k: int, like: torch.Tensor) -> None:
        super().__init__()
        self.span = rows
        self.d_in = d_in
        self.values = nn.Parameter(torch.zeros(k, dtype=like.dtype, device=like.device))
        self.register_buffer("index", torch.zeros(2, k, dtype=torch.long, device=like.device))


class SparseDelta(nn.Module):
    """A projection whose weight is the frozen pretrained weight with sparse increments at chosen entries."""

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], rate: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        w = out_major_weight(base)
        self.sparse = nn.ModuleDict({
            key: SparseIncrement((a, z), w.shape[1], sparse_count(rate, (z - a) * w.shape[1]), w)
            for key, (a, z) in sorted(slices.items(), key=lambda kv: kv[1])
        })
        self.chosen = False  # set once the entries are chosen (from data) or loaded (from an export)

    def _increment(self) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        parts = list(self.sparse.values())
        index = torch.cat([p.index for p in parts], dim=1)
        return (index[0], index[1]), torch.cat([p.values for p in parts])

    def weight(self) -> torch.Tensor:
        """The effective weight, (out, in) layout: pretrained entries, with w + δ at the chosen ones."""
        w = out_major_weight(self.base)
        at, values = self._increment()
        return torch.index_put(w, at, w[at] + values.to(w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.chosen:  # before selection the increment is zero: the pretrained function
            return self.base(x)
        b = getattr(self.base, "bias", None)
        return F.linear(x, self.weight().to(x.dtype), None if b is None else b.to(x.dtype))

    @torch.no_grad()
    def choose(self, score: torch.Tensor) -> None:
        """Train the entries of largest ``score`` (|gradient|, (out, in) layout), k per part; increments reset."""
        for part in self.sparse.values():
            a, z = part.span
            top = torch.topk(score[a:z].flatten(), part.values.numel()).indices
            part.index.copy_(torch.stack([top // part.d_in + a, top % part.d_in]))
            part.values.zero_()
        self.chosen = True

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base module with the increments written into its weight (the same sums as the forward pass)."""
        w = out_major_weight(self.base)  # a view: for Conv1D this writes through into the transposed weight
        at, values = self._increment()
        w[at] = w[at] + values.to(w.dtype)
        return self.base


def sparse_count(rate: float, numel: int) -> int:
    """k = ⌈ρ · numel⌉ (at least 1, at most numel)."""
    return max(1, min(numel, math.ceil(rate * numel - 1e-9)))


@register("sift")
class Sift(WrapsTargets):
    summary = "SIFT (Song et al. 2024): sparse increments on the top-|gradient| entries (sparse_rate, ~1%)"
    capabilities = Capabilities(
        fused_slices=True, merge=True, export="efficientft", quantized_base=False,
        quantized_base_reason="it writes sparse increments into the dense base weight W, which a 4/8-bit layer does "
                              "not hold",
    )
    Args = SiftArgs

    wrapper = SparseDelta

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        slices = {t.role or "all": t.out_slice or (0, out_major_weight(base).shape[0]) for t in targets}
        return SparseDelta(base, slices, self.args.sparse_rate)

    def init_from_data(self, model: nn.Module, batches: typing.Iterable[dict]) -> None:
        """Choose the entries: top-k of |∂L/∂W| summed over the first ``select_batches`` batches (dropout off)."""
        modules = _sparse_modules(model)
        weights = [m.base.weight for _, m in modules]
        scores = [torch.zeros_like(out_major_weight(m.base)) for _, m in modules]
        was_training = model.training
        model.eval()
        it = iter(batches)
        try:
            for w in weights:
                w.requires_grad_(True)
            for _ in range(self.args.select_batches):
                loss = model(**next(it)).loss
                grads = torch.autograd.grad(loss, weights)  # no .grad is touched: the head starts clean
                for s, g, (_, m) in zip(scores, grads, modules, strict=True):
                    s += g.t() if is_conv1d(m.base) else g
        finally:
            for w in weights:
                w.requires_grad_(False)
            model.train(was_training)
        for s, (_, m) in zip(scores, modules, strict=True):
            m.choose(s.abs())

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The chosen entries of every sparse increment (the selection is not redone on resume)."""
        return {f"{name}.sparse.{key}": part.index for name, m in _sparse_modules(model) for key, part in m.sparse.items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, m in _sparse_modules(model):
                for key, part in m.sparse.items():
                    part.index.copy_(state[f"{name}.sparse.{key}"])
                m.chosen = True

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        unchosen = [n for n, m in _sparse_modules(model) if not m.chosen]
        if unchosen:
            raise RuntimeError(f"SIFT: init_from_data must choose the entries before training ({unchosen[0]}).")
        return super().param_groups(model, strategy, lr, weight_decay)

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """Our own safetensors: the chosen indices (``...sparse.<key>.index``, (2, k): rows, cols), values, head."""
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        for name, m in _sparse_modules(model):
            for key, part in m.sparse.items():
                tensors[f"{name}.sparse.{key}.index"] = part.index.contiguous().cpu()
        meta = {"method": self.name, "sparse_rate": repr(self.args.sparse_rate)}
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata=meta)
        return {"format": "efficientft-sift"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from safetensors.torch import load_file

        model = self.prepare(base, targets, ctx)
        tensors = load_file(str(out_dir / TRAINABLE_FILE))
        state = model.state_dict()
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        wanted |= {f"{name}.sparse.{key}.index" for name, m in _sparse_modules(model) for key in m.sparse}
        missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
        if missing or extra:
            raise ConfigError(f"{out_dir}: this SIFT export does not fit the model (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); reload it with the targets it was trained with.")
        bad = [n for n in tensors if tensors[n].shape != state[n].shape]
        if bad:
            raise ConfigError(f"{out_dir}: {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model expects "
                              f"{tuple(state[bad[0]].shape)}; was it trained with another sparse_rate?")
        model.load_state_dict(tensors, strict=False)
        for _, m in _sparse_modules(model):
            m.chosen = True
        return model


def _sparse_modules(model: nn.Module) -> list[tuple[str, SparseDelta]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseDelta)]
