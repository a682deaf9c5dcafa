"""Parallel adapters (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning", ICLR,
arXiv 2110.04366; the "parallel" variant of LLM-Adapters, Hu et al. 2023).

The adapter reads the sub-layer's *input* x and is added to its output h: ``h ← h + s · W_up f(W_down x)``
(He et al. §3, Table 1 "Parallel Adapter", times the scaling s of their "scaled PA": s = 4 at the FFN is their
best setting, §4). ``positions`` chooses the sub-layer(s): ``ffn`` (default), ``attn``, or ``attn,ffn``. Initialised as
the authors' code does under their scripts' ``ffn_adapter_init_option="lora"`` (jxhe/unify-parameter-efficient-tuning,
``petl/petl_factory.py`` ``Adapter_Layer``): W_down ~ kaiming_uniform(a=√5) = U(±1/√d), W_up = 0, zero biases, so
the model starts as the base model; only the adapters and the task head train: L · P · (2dm + m + d) + head
for P positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..schema import Rule
from . import register
from ._adapters import AdapterMethod, BottleneckArgs, check_positions, linear_bottleneck
from .args import POSITIVE, arg
from .capabilities import Capabilities


@dataclass
class ParallelArgs(BottleneckArgs):
    scaling: float = arg(4.0, POSITIVE, note="He et al. use 4")  # s
    positions: str = arg("ffn", Rule("text"))  # ffn, attn, or attn,ffn

    def check(self) -> None:
        self.positions = ",".join(check_positions(self.positions))


@register("parallel_adapter")
class ParallelAdapterMethod(AdapterMethod):
    summary = "parallel adapter (He et al. 2022): h + s·W_up f(W_down x) beside the FFN (or attention)"
    revision = 2  # W_down Kaiming-uniform, W_up zero, as the reference's lora init (was N(0, 1e-2))
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = ParallelArgs
    parallel = True

    def positions(self) -> tuple[str, ...]:
        return check_positions(self.args.positions)

    def build(self, d: int, like: torch.Tensor) -> nn.Module:
        return linear_bottleneck(d, self.args.size(d), self.args.nonlinearity, like, self.args.scaling, init=lora_init)


def lora_init(down: nn.Linear, up: nn.Linear) -> None:
    """He et al.'s ``init_option="lora"``: W_down as nn.Linear draws it (kaiming_uniform, a=√5), W_up = 0."""
    nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
    nn.init.zeros_(up.weight)
