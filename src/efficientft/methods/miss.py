"""MiSS (Kang & Yin 2024, "MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing",
arXiv 2409.15371; formerly "Bone").

    ΔW = [Dᵀ Dᵀ ⋯ Dᵀ] ∈ R^{d_out×d_in},   D ∈ R^{r×d_out} trained, zero at init

One shard D is shared by all d_in/r column blocks of the weight, so ΔW x = Dᵀ Σ_c x_c (the input's r-wide chunks
summed, then one r×d_out product): cheaper than LoRA's two products, with r·d_out parameters per module. PEFT's
``MissConfig`` (r, miss_dropout; the default "miss" init; "bat" and "mini" are the paper's variants, via the
generic ``peft`` method). nn.Linear only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly
from .args import FRACTION, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class MissArgs(MethodArgs):
    rank: int = arg(64, POSITIVE_INT)
    dropout: float = arg(0.0, FRACTION)


@register("miss")
class MiSS(LinearOnly, PeftMethod):
    summary = "MiSS (Kang & Yin 2024): one shared trained shard D tiled across the weight's column blocks, via PEFT"
    Args = MissArgs
    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")
    peft_config_name = "MissConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": self.args.rank, "miss_dropout": self.args.dropout}
