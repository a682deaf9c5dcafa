"""PaCA, Partial Connection Adaptation (Woo et al. 2025, arXiv 2503.01905).

Instead of an adapter beside W, PaCA fine-tunes r randomly chosen columns (partial connections, i.e. input
features) of each targeted weight W (out × in) directly: W = [W_frozen | P] with P = W[:, S], |S| = r (the
paper's Eq. for the forward, y = x Wᵀ, is the pretrained layer's own: no extra module, no extra forward cost).
Its backward needs only the chosen columns of the input, ∂L/∂P = (∂L/∂y)ᵀ x_S, so only x_S is saved for the
weight gradient; :class:`_PartialLinear` computes exactly that instead of the full (out × in) weight gradient.

r × out_features parameters train per module (``rank`` = r); the columns are drawn once from the run's seed and
kept as a buffer (exported with the values, so a reload does not have to draw them again). Merging is trivial:
P is written back into its columns. The bias stays frozen; the task head trains. λ scales W_v's P.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lowrank import compute_dtype
from ..models.fused import out_major_weight, weight_shape
from ..models.roles import Target
from . import register
from ._decomp import (
    DENSE_BASE,
    check_rank,
    frozen,
    load_with_buffers,
    set_out_major,
    write_with_buffers,
)
from ._inject import WrapsTargets
from .args import POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities


@dataclass
class PacaArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # r: the number of columns of each targeted weight that train


class _PartialLinear(torch.autograd.Function):
    """y = x W_effᵀ + b with W_eff = W with columns S replaced by P; the weight gradient is for P only."""

    @staticmethod
    def forward(ctx, x, w, cols, index, bias):
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            w_eff = w.index_copy(1, index, cols.to(w.dtype)).to(dtype)
            y = F.linear(x.to(dtype), w_eff, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x.index_select(-1, index).to(dtype), w, cols, index)
        ctx.x_dtype, ctx.cols_dtype = x.dtype, cols.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        x_s, w, cols, index = ctx.saved_tensors
        g = grad.to(x_s.dtype)
        d_x = d_cols = None
        if ctx.needs_input_grad[0]:
            w_eff = w.index_copy(1, index, cols.to(w.dtype)).to(g.dtype)
            d_x = (g @ w_eff).to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            d_cols = (g.reshape(-1, g.shape[-1]).t() @ x_s.reshape(-1, x_s.shape[-1])).to(ctx.cols_dtype)
        return d_x, None, d_cols, None, None


class PartialColumns(nn.Module):
    """A projection whose columns ``index`` are a trainable parameter P; every other entry is frozen."""

    def __init__(self, base: nn.Module, index: torch.Tensor) -> None:
        super().__init__()
        self.base = frozen(base)
        w = out_major_weight(base)
        self.register_buffer("index", index.to(w.device))
        self.cols = nn.Parameter(w.detach()[:, self.index].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = out_major_weight(self.base)
        return _PartialLinear.apply(x, w, self.cols, self.index, getattr(self.base, "bias", None))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base).clone()
        w[:, self.index] = self.cols.to(w.dtype)
        set_out_major(self.base, w)
        return self.base


@register("paca")
class Paca(WrapsTargets):
    summary = "PaCA (Woo et al. 2025): train r random columns of each targeted weight in place, no adapter (rank)"
    Args = PacaArgs
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=DENSE_BASE, merge=True,
                                export="efficientft")

    wrapper = PartialColumns

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self._gen = torch.Generator().manual_seed(int(ctx.seed))  # the columns of each target, in target order
        return super().prepare(model, targets, ctx)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        index = torch.randperm(weight_shape(base)[1], generator=self._gen)[: self.args.rank].sort().values
        return PartialColumns(base, index)

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        """Fused slices are refused as by every method without them; the rank counts columns, so it must fit
        in_features (not min(out, in))."""
        super().check_targets(model, [t for t in targets if t.out_slice is not None])
        for t in targets:
            shape = weight_shape(model.get_submodule(t.name))
            check_rank(self.args.rank, t.name, shape, limit=shape[1])

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """The trained columns (``...cols``), their indices (``...index``) and the head."""
        return write_with_buffers(model, out_dir, self.name, PartialColumns, {"rank": str(self.args.rank)})

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        return load_with_buffers(self.prepare(base, targets, ctx), out_dir, self.name)
