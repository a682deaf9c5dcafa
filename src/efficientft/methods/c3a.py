"""C3A (Chen et al. 2025, "Parameter-Efficient Fine-Tuning via Circular Convolution", ACL 2025, arXiv 2407.19342).

    ΔW x = (1/d_in) [ Σ_j C(k_{ij}) x_j ]_i,   C(k)_{st} = k_{(t−s) mod b}  (the circulant matrix with first row k)

ΔW is a (d_out/b)×(d_in/b) grid of circulant blocks, so applying it is a circular convolution (C(k) x is x
circularly correlated with k, i.e. convolved with k reversed) of each input block with a trained kernel k_{ij}, computed by FFT in O(d log b); the update can have full rank with d_out·d_in/b
parameters per module (b = ``block_size``, which must divide both widths). PEFT's ``C3AConfig`` (block_size,
init_weights "xavier_uniform": C3A does not start at ΔW = 0, as the paper). nn.Linear only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly, check_divides
from .args import POSITIVE_INT, MethodArgs, arg, choice
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod

INITS = ("xavier_uniform", "kaiming_uniform", "gaussian", "zeros")


@dataclass
class C3aArgs(MethodArgs):
    block_size: int = arg(64, POSITIVE_INT)  # divides 384 (MiniLM), 768, 1024, 4096
    init: str = arg("xavier_uniform", choice(*INITS))


@register("c3a")
class C3A(LinearOnly, PeftMethod):
    summary = "C3A (Chen et al. 2025): ΔW as blocks of circulant matrices, a circular convolution by FFT, via PEFT"
    Args = C3aArgs
    capabilities = Capabilities(merge=True, export="peft",
                                quantized_base_reason="PEFT's C3A layers have no bitsandbytes variant")
    peft_config_name = "C3AConfig"

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"block_size": 8}  # the tiny models' widths are 16, 32 and 64

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)
        check_divides(self.name, model, targets, self.args.block_size, "block_size", dims=("in", "out"))

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"block_size": self.args.block_size, "init_weights": self.args.init}
