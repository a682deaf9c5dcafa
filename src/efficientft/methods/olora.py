"""OLoRA (Büyükakyüz 2024, "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models", arXiv 2406.01775).

The adapter starts from the QR decomposition of W (out × in): W = QR, B = Q[:, :r] (orthonormal columns) and
A = R[:r, :] (upper trapezoidal), and the frozen base becomes W_res = W − s·BA (s = α/r), so the model computes W at
init while the adapter spans W's leading column space from an orthonormal basis. This is PEFT's
``init_lora_weights="olora"``.

PEFT's OLoRA factorises the stored weight without regard to GPT-2's transposed Conv1D layout, so Conv1D targets are
refused. Export converts to a plain LoRA delta for the original W (see :mod:`efficientft.methods._residual`).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import is_conv1d
from ..models.roles import Target
from . import register
from ._residual import ResidualLoRA
from .capabilities import Capabilities


@register("olora")
class OLoRA(ResidualLoRA):
    summary = "OLoRA (Buyukakyuz 2024): LoRA initialised from the QR factors of W, base = residual"
    capabilities = Capabilities(
        rank=True, merge=True, export="peft", quantized_base=False,
        quantized_base_reason="it factorises the base weight W by QR and rewrites it as the residual, which needs W "
                              "in full precision",
    )

    def peft_kwargs(self) -> dict[str, Any]:
        return {"init_lora_weights": "olora"}

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)
        conv = [t.name for t in targets if is_conv1d(model.get_submodule(t.name))]
        if conv:
            raise ConfigError(f"method 'olora' cannot adapt transposed Conv1D weights ({conv[0]}); PEFT's OLoRA "
                              "initialisation assumes nn.Linear. Use pissa or lora there.")
