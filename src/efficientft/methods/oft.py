"""OFT (Qiu et al. 2023, "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", NeurIPS 2023,
arXiv 2306.07280).

    W = W₀ R,   R = diag(R₁, …, R_{d_in/b}),   Rᵢ = (I + Qᵢ)(I − Qᵢ)⁻¹,  Qᵢ = −Qᵢᵀ

R rotates the layer's input space with orthogonal b×b blocks (the Cayley transform of trained skew-symmetric Qᵢ,
b(b−1)/2 parameters each), so every row of W keeps its norm and every pair of rows its angle ("hyperspherical
energy"): the pretrained geometry is preserved. Qᵢ = 0 at init (R = I). PEFT's ``OFTConfig`` (oft_block_size,
coft, eps, block_share); ``cayley_neumann`` switches to OFTv2's truncated Neumann series for (I − Q)⁻¹, faster
but only approximately orthogonal, so it is off by default. nn.Linear only; b must divide d_in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly, check_divides
from .args import BOOL, POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class OftArgs(MethodArgs):
    block_size: int = arg(32, POSITIVE_INT)
    coft: bool = arg(False, BOOL)  # constrained OFT: keep R within eps of I
    eps: float = arg(6e-5, POSITIVE)
    block_share: bool = arg(False, BOOL)  # one Q for all blocks of a layer
    cayley_neumann: bool = arg(False, BOOL)


@register("oft")
class OFT(LinearOnly, PeftMethod):
    summary = "OFT (Qiu et al. 2023): W0·R with R block-diagonal orthogonal (Cayley), row angles kept, via PEFT"
    Args = OftArgs
    capabilities = Capabilities(quantized_base=True, merge=True, export="peft")
    peft_config_name = "OFTConfig"

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)
        check_divides(self.name, model, targets, self.args.block_size, "block_size")

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": 0, "oft_block_size": self.args.block_size, "coft": self.args.coft, "eps": self.args.eps,
                "block_share": self.args.block_share, "use_cayley_neumann": self.args.cayley_neumann}
