"""LoKr (Yeh et al. 2024, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation",
ICLR 2024, arXiv 2309.14859; the LyCORIS Kronecker adapter).

    ΔW = (α/r) · W₁ ⊗ W₂,   W₁ ∈ R^{p×q},  W₂ ∈ R^{(d_out/p)×(d_in/q)}

d_out and d_in are split into factors (``decompose_factor``; −1: as near to square as possible); the larger factor
W₂ is itself a rank-r product B A when r is below its size (``decompose_both`` factorises W₁ too). W₂ starts at
zero (ΔW = 0 at init). PEFT's ``LoKrConfig`` (r, alpha, rank_dropout, module_dropout, decompose_both,
decompose_factor); nn.Linear only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from ..schema import Rule
from . import register
from ._shapes import LinearOnly
from .args import BOOL, arg
from .base import Context
from .capabilities import Capabilities
from .loha import LycorisArgs
from .peft_backed import PeftMethod


@dataclass
class LokrArgs(LycorisArgs):
    decompose_both: bool = arg(False, BOOL)
    decompose_factor: int = arg(-1, Rule("int", -1, None))

    def check(self) -> None:
        if self.decompose_factor == 0:
            raise ValueError("decompose_factor must be -1 (automatic) or a positive integer, got 0.")


@register("lokr")
class LoKr(LinearOnly, PeftMethod):
    summary = "LoKr (Yeh et al. 2024): ΔW = (α/r)·W1 ⊗ W2, a Kronecker product with a low-rank W2, via PEFT"
    Args = LokrArgs
    capabilities = Capabilities(merge=True, export="peft",
                                quantized_base_reason="PEFT's LyCORIS layers (LoKr) have no bitsandbytes variant")
    peft_config_name = "LoKrConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {**self.args.lycoris_kwargs(), "decompose_both": self.args.decompose_both,
                "decompose_factor": self.args.decompose_factor}
