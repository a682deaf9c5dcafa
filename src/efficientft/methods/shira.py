"""SHiRA (Bhardwaj et al. 2024, "Sparse High Rank Adapters", NeurIPS 2024, arXiv 2406.13175).

    W = W₀ + M ⊙ S,   M ∈ {0,1}^{d_out×d_in} a fixed mask with r·(d_out + d_in) ones

A fixed random sparse mask picks the entries of each adapted weight that train (as many as a rank-r LoRA has
parameters, typically 1–2 % of the weight); the update is sparse but of high rank, merging only touches those
entries, and switching adapters is a scatter. S = 0 at init. The mask is drawn from the run's seed. PEFT's
``ShiraConfig`` (r, mask_type "random", random_seed). nn.Linear only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly
from .args import POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class ShiraArgs(MethodArgs):
    rank: int = arg(32, POSITIVE_INT)  # the mask has as many entries as a rank-r LoRA has parameters: r·(d_out + d_in)


@register("shira")
class SHiRA(LinearOnly, PeftMethod):
    summary = "SHiRA (Bhardwaj et al. 2024): a fixed random sparse mask of weight entries trains, via PEFT"
    Args = ShiraArgs
    capabilities = Capabilities(quantized_base=True, merge=True, export="peft")
    peft_config_name = "ShiraConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": self.args.rank, "mask_type": "random", "random_seed": ctx.seed}
