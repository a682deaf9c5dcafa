"""RandLoRA (Albert et al. 2025, "RandLoRA: Full-rank parameter-efficient fine-tuning of large models", ICLR 2025,
arXiv 2502.00987).

    ΔW = (α/r) · Σ_{i=1}^{N} B_i Λ_i A Γ_i,   N = ⌈min(d_out, d_in)/r⌉

B_i ∈ R^{max(d)×r} (N distinct ones) and A ∈ R^{r×min(d)} are frozen random bases shared by all layers (from a
seeded generator); PEFT uses one A for all N terms (its "unique base"; the B_i differ, so the terms still span the
full space). Only the diagonal scalings Λ_i ∈ R^{r×r} and Γ_i ∈ R^{min(d)×min(d)} train (Λ starts at zero, so ΔW = 0 at
init). The N bases together span the full space, so the update can have full rank, unlike LoRA's rank r, at
r·N + N·min(d) parameters per module. PEFT's ``RandLoraConfig`` (r, randlora_alpha = 20·r by default as in
PEFT, sparse bases, dropout, projection_prng_key = the run's seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from .args import BOOL, FRACTION, OPTIONAL_POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class RandLoraArgs(MethodArgs):
    rank: int = arg(32, POSITIVE_INT)
    alpha: float | None = arg(None, OPTIONAL_POSITIVE)  # None: 20·rank (PEFT's default 640 for r = 32)
    sparse: bool = arg(False, BOOL)  # ternary sparse bases (density 1/√D: very_sparse; 1/3: sparse)
    very_sparse: bool = arg(False, BOOL)
    dropout: float = arg(0.0, FRACTION)


@register("randlora")
class RandLoRA(PeftMethod):
    summary = "RandLoRA (Albert et al. 2025): full-rank ΔW from frozen shared random bases with trained scalings, via PEFT"
    Args = RandLoraArgs
    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")
    peft_config_name = "RandLoraConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        a = self.args
        return {"r": a.rank, "randlora_alpha": a.alpha if a.alpha is not None else 20 * a.rank, "sparse": a.sparse,
                "very_sparse": a.very_sparse, "randlora_dropout": a.dropout, "projection_prng_key": ctx.seed,
                "save_projection": True}
