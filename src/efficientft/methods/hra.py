"""HRA (Yuan, Liu, Wang & Xu 2024, "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder
Reflection Adaptation", NeurIPS 2024, arXiv 2405.17484).

    W = W₀ H₁ H₂ ⋯ H_r,   Hᵢ = I − 2 uᵢuᵢᵀ / ‖uᵢ‖²

A chain of r Householder reflections of the input space (each orthogonal, so the product is): the paper shows it
is both an orthogonal adaptation and an adaptive rank-r update, W₀ H − W₀ having rank ≤ r. The trained parameters
are the r vectors uᵢ ∈ R^{d_in}, initialised in identical pairs so that H = I at init. ``apply_gs`` orthogonalises
the uᵢ (Gram-Schmidt) first. PEFT's ``HRAConfig`` (r, apply_GS). nn.Linear only; r must be even and ≤ d_in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly
from .args import BOOL, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class HraArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)
    apply_gs: bool = arg(False, BOOL)

    def check(self) -> None:
        if self.rank % 2:
            raise ValueError(f"rank must be even (HRA starts from pairs of equal reflections), got {self.rank}.")


@register("hra")
class HRA(LinearOnly, PeftMethod):
    summary = "HRA (Yuan et al. 2024): W0·H1⋯Hr, a product of r Householder reflections (orthogonal), via PEFT"
    Args = HraArgs
    capabilities = Capabilities(rank=True, merge=True, export="peft",
                                quantized_base_reason="PEFT's HRA layers have no bitsandbytes variant")
    peft_config_name = "HRAConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": self.args.rank, "apply_GS": self.args.apply_gs}
