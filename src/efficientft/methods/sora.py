"""SoRA, Sparse Low-rank Adaptation (Ding et al., EMNLP 2023, "Sparse Low-rank Adaptation of Pre-trained Language
Models", arXiv 2311.11696; reference code TsinghuaC3I/SoRA).

A LoRA update with a gate between its factors, ΔW = s · B diag(g) A (the paper's Eq. 5: h = W₀x + W_u(g ⊙ W_d x)).
What is implemented, as the reference code does it under its published settings (``scripts/run_glue_sora_*.sh``):

- the gate g ∈ R^r is drawn from N(0, 1) (the reference's ``torch.randn(1, r)``); B starts at zero, so the model
  at initialisation is still the pretrained one; A is Kaiming-initialised as LoRA's;
- the loss adds an L1 term ``sparse_lambda · mean |g|``, the mean over every gate of every adapted module (the
  reference's ``sparse_lambda``, 10 in its scripts). It is added as a gradient in :meth:`Sora.after_backward`
  (the loop's hook after the task loss's backward, before clipping): the same gradient as adding it to the loss;
- A and B train by AdamW; the gates by their own AdamW step (no weight decay, the run's scheduled rate: the
  reference's gate optimizer takes the main learning rate and the same warm-up/linear schedule by default), after
  which every gate is soft-thresholded by the constant ξ (``xi``, the reference's ``sparse_lambda_2``, 3e-4 in
  its scripts), *not* scaled by the learning rate:

      g_i ← sign(g_i) · max(|g_i| − ξ, 0).

  (The paper's Eq. 8 writes the threshold as η_t · ξ; the reference code, whose behaviour the paper's numbers
  come from, subtracts ξ itself. An lr-scaled threshold at lr 5e-4 is 1.5e-7 per step: nothing is ever pruned.
  The reference also zeroes a gate that lands in (0, ξ) after the shift, i.e. anything within 2ξ of zero; this
  is the exact proximal operator of ξ‖g‖₁, which zeroes within ξ and keeps the other gates' value −ξ.)

Gates that the task does not need reach exactly zero, and the rank of each module shrinks to the number of
non-zero gates (its effective rank, :meth:`Sora.effective_ranks`; a zero gate's row of A and column of B no longer
contribute and are pruned by merging). λ of the attention strategy reaches W_v's gates too (their group's rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.fused import out_major_weight
from ..models.roles import Target
from ..strategy import Strategy
from . import register
from ._decomp import frozen, set_out_major
from ._inject import WrapsTargets
from .args import NON_NEGATIVE, OPTIONAL_POSITIVE, POSITIVE_INT, MethodArgs, arg
from .capabilities import Capabilities

GATE = "gate"


@dataclass
class SoraArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # the starting rank r (the gates prune it)
    alpha: float | None = arg(None, OPTIONAL_POSITIVE)  # scaling s = alpha / rank (default alpha = rank: s = 1)
    sparse_lambda: float = arg(10.0, NON_NEGATIVE)  # weight of the L1 term sparse_lambda · mean |g| in the loss (reference: 10)
    xi: float = arg(3e-4, NON_NEGATIVE)  # ξ: subtracted from every |g| after each gate step, not scaled by lr (reference: 3e-4)


def soft_threshold(g: torch.Tensor, tau: float) -> torch.Tensor:
    """sign(g) · max(|g| − τ, 0): the proximal operator of τ‖g‖₁."""
    return torch.sign(g) * torch.clamp(g.abs() - tau, min=0.0)


class GatedLoRA(nn.Module):
    """base(x) + s · ((x Aᵀ) ⊙ g) Bᵀ with A (r × in) Kaiming-initialised, B (out × r) zeros, g ~ N(0, 1)."""

    def __init__(self, base: nn.Module, rank: int, scale: float) -> None:
        super().__init__()
        self.base = frozen(base)
        w = out_major_weight(base)
        out_f, in_f = w.shape
        self.scaling = scale
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))
        self.gate = nn.Parameter(torch.randn(rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.A.to(x.dtype)) * self.gate.to(x.dtype)
        return self.base(x) + self.scaling * F.linear(h, self.B.to(x.dtype))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base)
        set_out_major(self.base, w + self.scaling * (self.B * self.gate) @ self.A)
        return self.base


class SparseAdamW(torch.optim.AdamW):
    """AdamW, then the proximal L1 step on every group marked ``gate`` (and on no other): g ← soft_threshold(g, ξ),
    ξ a constant (not scaled by the group's learning rate)."""

    def __init__(self, groups: list[dict], lr: float, weight_decay: float, xi: float) -> None:
        super().__init__(groups, lr=lr, weight_decay=weight_decay)
        self.xi = xi

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            if group.get(GATE):
                for p in group["params"]:
                    p.copy_(soft_threshold(p, self.xi))
        return loss


@register("sora")
class Sora(WrapsTargets):
    summary = ("SoRA (Ding et al. 2023): gated LoRA, gates soft-thresholded by ξ each step to prune rank "
               "(rank, sparse_lambda, xi)")
    Args = SoraArgs
    revision = 2  # gates drawn, an L1 term and a constant threshold ξ: it prunes, as the reference code does
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=(
                                    "its gated factors are sized from, and merged into, the dense base weight W"),
                                merge=True, export="efficientft")

    wrapper = GatedLoRA  # no fused slices; the rank fits every weight (check_targets)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        alpha = self.args.alpha if self.args.alpha is not None else self.args.rank
        return GatedLoRA(base, self.args.rank, alpha / self.args.rank)

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
        return SparseAdamW(groups, lr, weight_decay, float(self.args.xi))

    def l1_term(self, model: nn.Module) -> torch.Tensor:
        """sparse_lambda · mean |g| over every gate of every adapted module (the reference's loss term)."""
        gates = torch.cat([m.gate.reshape(-1) for m in model.modules() if isinstance(m, GatedLoRA)])
        return float(self.args.sparse_lambda) * gates.abs().mean()

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Add the L1 term's gradient to the task loss's (as if it were part of the loss)."""
        if self.args.sparse_lambda:
            self.l1_term(model).backward()

    def effective_ranks(self, model: nn.Module) -> dict[str, int]:
        """The non-zero gates of every adapted module: the rank SoRA has kept."""
        return {n: int((m.gate != 0).sum()) for n, m in model.named_modules() if isinstance(m, GatedLoRA)}

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        info = super().write_export(model, out_dir)
        ranks = self.effective_ranks(model)
        return {**info, "effective_rank": ranks, "effective_rank_total": sum(ranks.values())}
