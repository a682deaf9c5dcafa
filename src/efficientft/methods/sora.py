"""SoRA, Sparse Low-rank Adaptation (Ding et al., EMNLP 2023, "Sparse Low-rank Adaptation of Pre-trained Language
Models", arXiv 2311.11696).

A LoRA update with a gate between its factors, ΔW = s · B diag(g) A (the paper's Eq. 5: h = W₀x + W_u(g ⊙ W_d x)),
g ∈ R^r initialised to ones. A and B train by AdamW; the gate by proximal gradient with an L1 penalty (Eq. 7–8):
after each gradient step of rate η the gate is soft-thresholded,

    g_i ← sign(g_i) · max(|g_i| − η · λ_sparse, 0),

so gates that the task does not need reach exactly zero, and the rank of each module shrinks to the number of
non-zero gates (its effective rank, :meth:`Sora.effective_ranks`; a zero gate's row of A and column of B no longer
contribute and are pruned by merging). :class:`SparseAdamW` is AdamW with that proximal step on the gate groups
(η is the group's own scheduled rate: λ of the attention strategy reaches W_v's gates too). The gates get no
weight decay: the L1 proximal step is their regulariser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.fused import out_major_weight, replace_module
from ..models.roles import Target
from ..strategy import Strategy
from . import register
from ._decomp import freeze_but_heads, frozen, merge_modules, set_out_major
from .base import Context, Method, positive_int
from .capabilities import Capabilities

GATE = "gate"


@dataclass
class SoraArgs:
    rank: int = 8  # the starting rank r (the gates prune it)
    alpha: float | None = None  # scaling s = alpha / rank (default alpha = rank: s = 1)
    sparse_lambda: float = 1e-3  # λ_sparse: the L1 weight of the gates (the threshold is lr · λ_sparse)

    def __post_init__(self) -> None:
        positive_int("rank", self.rank)
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}.")
        if not isinstance(self.sparse_lambda, (int, float)) or not self.sparse_lambda >= 0:
            raise ValueError(f"sparse_lambda must be a number >= 0, got {self.sparse_lambda!r}.")


def soft_threshold(g: torch.Tensor, tau: float) -> torch.Tensor:
    """sign(g) · max(|g| − τ, 0): the proximal operator of τ‖g‖₁."""
    return torch.sign(g) * torch.clamp(g.abs() - tau, min=0.0)


class GatedLoRA(nn.Module):
    """base(x) + s · ((x Aᵀ) ⊙ g) Bᵀ with A (r × in) Kaiming-initialised, B (out × r) zeros, g ones."""

    def __init__(self, base: nn.Module, rank: int, scale: float) -> None:
        super().__init__()
        self.base = frozen(base)
        w = out_major_weight(base)
        out_f, in_f = w.shape
        self.scaling = scale
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))
        self.gate = nn.Parameter(torch.ones(rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.A.to(x.dtype)) * self.gate.to(x.dtype)
        return self.base(x) + self.scaling * F.linear(h, self.B.to(x.dtype))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base)
        set_out_major(self.base, w + self.scaling * (self.B * self.gate) @ self.A)
        return self.base


class SparseAdamW(torch.optim.AdamW):
    """AdamW, then the proximal L1 step on every group marked ``gate``: g ← soft_threshold(g, lr · λ_sparse)."""

    def __init__(self, groups: list[dict], lr: float, weight_decay: float, sparse_lambda: float) -> None:
        super().__init__(groups, lr=lr, weight_decay=weight_decay)
        self.sparse_lambda = sparse_lambda

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            if group.get(GATE):
                tau = float(group["lr"]) * self.sparse_lambda
                for p in group["params"]:
                    p.copy_(soft_threshold(p, tau))
        return loss


@register("sora")
class Sora(Method):
    summary = "SoRA (Ding et al. 2023): gated LoRA, gates soft-thresholded each step to prune rank (rank, sparse_lambda)"
    Args = SoraArgs
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=(
                                    "its gated factors are sized from, and merged into, the dense base weight W"),
                                merge=True, export="efficientft")

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.check_targets(model, targets)  # no fused slices; the rank fits every weight
        self.targets, self.ctx = targets, ctx
        freeze_but_heads(model, ctx.heads)
        alpha = self.args.alpha if self.args.alpha is not None else self.args.rank
        for t in targets:
            replace_module(model, t.name, GatedLoRA(model.get_submodule(t.name), self.args.rank,
                                                    alpha / self.args.rank))
        return model

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        """The strategy's groups, each split into its gates (``gate``: no weight decay, proximal L1) and the rest."""
        out = []
        for g in super().param_groups(model, strategy, lr, weight_decay):
            for gate in (False, True):
                idx = [i for i, n in enumerate(g["names"]) if n.endswith("." + GATE) == gate]
                if not idx:
                    continue
                part = {k: v for k, v in g.items() if k not in ("params", "names")}
                part.update(params=[g["params"][i] for i in idx], names=[g["names"][i] for i in idx])
                if gate:
                    part.update(weight_decay=0.0, **{GATE: True})
                out.append(part)
        return out

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return SparseAdamW(groups, lr, weight_decay, float(self.args.sparse_lambda))

    def effective_ranks(self, model: nn.Module) -> dict[str, int]:
        """The non-zero gates of every adapted module: the rank SoRA has kept."""
        return {n: int((m.gate != 0).sum()) for n, m in model.named_modules() if isinstance(m, GatedLoRA)}

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, GatedLoRA)

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        info = super().write_export(model, out_dir)
        ranks = self.effective_ranks(model)
        return {**info, "effective_rank": ranks, "effective_rank_total": sum(ranks.values())}
