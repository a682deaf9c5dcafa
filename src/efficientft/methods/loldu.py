"""LoLDU, Low-Rank Adaptation via Lower-Diag-Upper Decomposition (Shi et al. 2024, arXiv 2410.13618).

The pretrained weight is factorised as W = P L D U (LU with partial pivoting; L unit lower-triangular, D
diagonal, U unit upper-triangular). The top-r part of it (the first r columns of P L, the first r pivots of D,
the first r rows of U) becomes the adapted subspace and the rest the frozen residual (the paper's Fig. 3 and its
forward pass h = W_res x + σ · P L_r D_r U_r x, with W_res = W − P L_r D_r U_r):

    W' = W_res + σ · (P L_r) diag(z) U_r,      z initialised to D_r, σ to 1,

so the model equals the base model at initialisation. Only the r diagonal entries z and the scalar σ train
(r + 1 parameters per module): the fewest of any method here. L_r, U_r are frozen. Merging writes W' back into
the weight exactly; export is our safetensors of z, σ (the decomposition is recomputed from the same base on
reload). The factorisation needs the dense base weight: no quantized base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register
from ._decomp import DENSE_BASE, Decomposed
from .args import POSITIVE_INT, MethodArgs, arg
from .capabilities import Capabilities


@dataclass
class LolduArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # r: the pivots of the LDU decomposition whose diagonal entries train


def ldu_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P L_r, D_r, U_r) of W = P L D U: (out × r), (r,), (r × in); U_r's rows are U's divided by their pivot."""
    p, lower, upper = torch.linalg.lu(w)
    d = torch.diagonal(upper)[:rank]
    safe = torch.where(d.abs() > 0, d, torch.ones_like(d))  # a zero pivot keeps its row of U as it is
    return (p @ lower)[:, :rank], safe, upper[:rank] / safe[:, None]


@register("loldu")
class Loldu(Decomposed):
    summary = "LoLDU (Shi et al. 2024): W = P L D U; train r diagonal entries + a scale, L and U frozen (rank)"
    Args = LolduArgs
    scaled = True
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=DENSE_BASE, merge=True,
                                export="efficientft")

    def factors(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return ldu_factors(w, self.args.rank)
