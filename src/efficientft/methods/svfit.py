"""SVFit, fine-tuning by singular values (Sun et al. 2024, arXiv 2409.05926).

The pretrained weight is split by its SVD, W = U Σ Vᵀ, into its best rank-r approximation and the rest,
W = U_r Σ_r V_rᵀ + W_res, and only the r top singular values train, scaling the principal subspaces:

    W' = W_res + U_r diag(σ) V_rᵀ,      σ initialised to Σ_r,

so the model starts as the base model, every update ΔW = U_r diag(Δσ) V_rᵀ lies in the span of the top-r
singular vectors, and r parameters train per module. U_r, V_r are frozen. Merging writes W' into the weight;
export is our safetensors of σ (the SVD is recomputed from the same base on reload). No quantized base: the SVD
needs the dense weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from ._decomp import DENSE_BASE, Decomposed
from .args import POSITIVE_INT, MethodArgs, arg
from .capabilities import Capabilities


@dataclass
class SvfitArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # r: the top singular values that train


@register("svfit")
class Svfit(Decomposed):
    summary = "SVFit (Sun et al. 2024): train the top-r singular values of each targeted weight (rank)"
    Args = SvfitArgs
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=DENSE_BASE, merge=True,
                                export="efficientft")

    def factors(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = self.args.rank
        return u[:, :r], s[:r], vh[:r]
