"""VeRA (Kopiczko, Blankevoort & Asano 2024, "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024,
arXiv 2310.11454).

    h = W₀x + Λ_b B Λ_d A x,    Λ_d = diag(d) ∈ R^{r×r},  Λ_b = diag(b) ∈ R^{d_out×d_out}

A ∈ R^{r×d_in} and B ∈ R^{d_out×r} are frozen random matrices (Kaiming uniform, from a seeded generator) shared by
every adapted layer: one pair sized for the largest layer, each layer using its top-left slice. Only the scaling
vectors d (init ``d_initial``) and b (init 0, so ΔW = 0 at init) train: r + d_out parameters per adapted module,
which is why r may exceed the layer's width (the paper uses r = 1024 on RoBERTa-large). PEFT's ``VeraConfig`` (r,
d_initial, vera_dropout, projection_prng_key = the run's seed, save_projection so the export is self-contained).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from ..schema import Rule
from . import register
from .args import FRACTION, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class VeraArgs(MethodArgs):
    rank: int = arg(256, POSITIVE_INT)
    d_initial: float = arg(0.1, Rule("float"))
    dropout: float = arg(0.0, FRACTION)


@register("vera")
class VeRA(PeftMethod):
    summary = "VeRA (Kopiczko et al. 2024): frozen shared random A, B; only the scaling vectors d, b train, via PEFT"
    Args = VeraArgs
    capabilities = Capabilities(rank=False, quantized_base=True, merge=True, export="peft")
    peft_config_name = "VeraConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": self.args.rank, "d_initial": self.args.d_initial, "vera_dropout": self.args.dropout,
                "projection_prng_key": ctx.seed, "save_projection": True}
