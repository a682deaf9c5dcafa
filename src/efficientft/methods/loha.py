"""LoHa (Hyeon-Woo, Ye-Bin & Oh 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning", ICLR 2022, arXiv 2108.06098; the LyCORIS adapter).

    ΔW = (α/r) · (B₁A₁) ⊙ (B₂A₂),   Bᵢ ∈ R^{d_out×r},  Aᵢ ∈ R^{r×d_in}

The Hadamard product of two rank-r matrices has rank up to r², so LoHa reaches a higher-rank update than LoRA for
the same 2r(d_in + d_out) parameters per module. One factor starts at zero (ΔW = 0 at init). PEFT's ``LoHaConfig``
(r, alpha, rank_dropout, module_dropout); nn.Linear only (PEFT's LyCORIS layers do not take GPT-2's Conv1D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly
from .args import FRACTION, OPTIONAL_POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class LycorisArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)
    alpha: float | None = arg(None, OPTIONAL_POSITIVE)  # None: α = r (scale 1)
    rank_dropout: float = arg(0.0, FRACTION)
    module_dropout: float = arg(0.0, FRACTION)

    def lycoris_kwargs(self) -> dict[str, Any]:
        return {"r": self.rank, "alpha": self.alpha if self.alpha is not None else self.rank,
                "rank_dropout": self.rank_dropout, "module_dropout": self.module_dropout}


@register("loha")
class LoHa(LinearOnly, PeftMethod):
    summary = "LoHa (Hyeon-Woo et al. 2022): ΔW = (α/r)·(B1A1)⊙(B2A2), a Hadamard product of two low-rank terms, via PEFT"
    Args = LycorisArgs
    capabilities = Capabilities(rank=True, merge=True, export="peft",
                                quantized_base_reason="PEFT's LyCORIS layers (LoHa) have no bitsandbytes variant")
    peft_config_name = "LoHaConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return self.args.lycoris_kwargs()
