"""rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", arXiv 2312.03732).

LoRA scales its update by γ_r = α/r, which makes the update (and its gradients) collapse as the rank grows; the paper
shows that γ_r ∈ Θ(1/√r) is the scaling under which learning neither collapses nor explodes with r, and proposes
γ_r = α/√r. This is PEFT's ``use_rslora=True``; everything else is LoRA.

α is therefore a constant here, not tied to the rank as in our LoRA default (α = r would give γ_r = √r, which
grows with r and defeats the point). The default α = 8 is PEFT's ``LoraConfig`` default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import register
from .args import OPTIONAL_POSITIVE, arg
from .capabilities import Capabilities
from .lora import FusedSlices, LoraArgs, LoraBacked


@dataclass
class RsLoraArgs(LoraArgs):
    alpha: float | None = arg(8.0, OPTIONAL_POSITIVE)  # constant α: the scale is α/√r (None: α = r, i.e. γ_r = √r)


@register("rslora")
class RsLoRA(FusedSlices, LoraBacked):
    summary = "rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r), stable across ranks, via PEFT"
    # GPT-2's fused c_attn: our FusedLoRA with the rank-stabilised scale
    capabilities = Capabilities(fused_slices=True, rank=True, quantized_base=True, merge=True, export="peft")
    Args = RsLoraArgs

    def peft_kwargs(self) -> dict[str, Any]:
        return {"use_rslora": True}

    def fused_scale(self) -> float:
        return self.alpha / math.sqrt(self.args.rank)
