"""LoRA+ (Hayou, Ghosh & Yu 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv 2402.12354).

With one learning rate for A and B, LoRA's feature learning is inefficient in wide models; the paper shows B must
learn faster than A, and sets η_B = ratio · η_A (its recommended ratio is 2^4 = 16). The model is plain LoRA; only
the optimizer changes.

The ratio is a per-parameter factor of the method's own (:meth:`Method.lr_scales`) that *multiplies* with the
attention strategy's role factor, so the two compose: with λ on W_v, W_v's B learns at η·λ·ratio and its A at η·λ,
W_q's B at η·ratio and its A at η. (PEFT's ``create_loraplus_optimizer`` would build its own groups and lose λ.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from . import register
from .args import POSITIVE, arg
from .capabilities import Capabilities
from .lora import FusedSlices, LoraArgs, LoraBacked


@dataclass
class LoraPlusArgs(LoraArgs):
    ratio: float = arg(16.0, POSITIVE, note="B's learning rate over A's")  # η_B / η_A


@register("loraplus")
class LoraPlus(FusedSlices, LoraBacked):
    summary = "LoRA+ (Hayou et al. 2024): LoRA with B learning ratio x faster than A (default 16)"
    # GPT-2's fused c_attn: our FusedLoRA, whose B factors are ``lora.<role>.B``
    capabilities = Capabilities(fused_slices=True, rank=True, quantized_base=True, merge=True, export="peft")
    Args = LoraPlusArgs

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        return {n: float(self.args.ratio) for n, p in model.named_parameters()
                if p.requires_grad and (".lora_B." in n or _FUSED_B.search(n))}


_FUSED_B = re.compile(r"\.lora\.\w+\.B$")
