"""CorDA (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for
Task-Aware Parameter-Efficient Fine-tuning", NeurIPS 2024, arXiv 2406.05223).

    W C = U S Vᵀ  (C = XᵀX, the covariance of the layer's inputs X on calibration data),   W = U S (Vᵀ C⁻¹)
    IPM:  s·BA = U_r S_r V_rᵀ C⁻¹ (the r largest triplets),   KPM: the r smallest;   W_res = W − s·BA frozen

PiSSA decomposes W alone; CorDA decomposes W oriented by the task's activations, so the adapter starts on the
directions the task actually excites (IPM, "instruction-previewed") or, in KPM, on those that matter least to
the calibration data, leaving the rest of W untouched ("knowledge-preserved"). The model computes W at init.

Calibration data: the run's own training batches, taken by :meth:`init_from_data` before the optimizer exists, as
EVA does (``init_batches`` of them, one sequence at a time, padding cut off: PEFT's covariance hook expects one
sequence per forward). PEFT computes the covariance and the decomposition (``preprocess_corda``) and the init
(``corda_init``); its ``init_lora_weights="corda"`` needs them before wrapping, so the model is wrapped as plain
LoRA and each layer is re-initialised in place. The base changes to W_res, so the export is converted to a plain
LoRA for the original W, as PiSSA's (:mod:`efficientft.methods._residual`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import register
from ._residual import ResidualLoRA
from .args import POSITIVE_INT, arg, choice
from .capabilities import Capabilities
from .lora import LoraArgs

MODES = ("ipm", "kpm")


@dataclass
class CordaArgs(LoraArgs):
    mode: str = arg("ipm", choice(*MODES))  # ipm: the r largest context-oriented components; kpm: the r smallest
    init_batches: int = arg(8, POSITIVE_INT)


@register("corda")
class CorDA(ResidualLoRA):
    summary = "CorDA (Yang et al. 2024): LoRA from the SVD of W·C (C: input covariance on training batches), via PEFT"
    Args = CordaArgs
    capabilities = Capabilities(
        rank=True, merge=True, export="peft", quantized_base=False,
        quantized_base_reason="it decomposes the full-precision W oriented by the inputs' covariance and rewrites W")

    def init_from_data(self, model: nn.Module, batches: Iterable[dict]) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        data = list(itertools.islice(batches, self.args.init_batches))
        if not data:
            raise ConfigError("method 'corda' needs training batches for its initialisation; none came.")
        inner = model.get_base_model()
        layers = {n: m for n, m in inner.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A}
        config = LoraConfig(r=self.args.rank, target_modules=[f"{n}.base_layer" for n in layers],
                            init_lora_weights="corda", corda_config=CordaConfig(corda_method=self.args.mode))
        training = model.training

        def run() -> None:
            with torch.no_grad(), model.disable_adapter():
                for b in data:
                    for row in range(b["input_ids"].shape[0]):
                        n = int(b["attention_mask"][row].sum())
                        inner(**{k: v[row:row + 1, :n] for k, v in b.items() if k != "labels"})

        preprocess_corda(inner, config, run_model=run)
        for m in layers.values():
            m.corda_init("default", "corda")
        model.train(training)
        self._snapshot(model)

    def _snapshot(self, model: nn.Module) -> None:
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(model, save_embedding_layers=False)
        self.initial = {k: v.detach().clone().cpu().contiguous() for k, v in state.items()}

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The initial A, B of each layer (the residual base is W − s·B₀A₀ of them): a resumed run rebuilds both
        without the calibration data."""
        return {"initial": dict(self.initial)}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import transpose

        initial = state["initial"]
        for name, m in model.named_modules():
            if isinstance(m, LoraLayer) and "default" in m.lora_A:
                a, b = initial[f"{name}.lora_A.weight"], initial[f"{name}.lora_B.weight"]
                base = m.get_base_layer()
                with torch.no_grad():
                    m.lora_A["default"].weight.copy_(a)
                    m.lora_B["default"].weight.copy_(b)
                    base.weight.sub_(transpose(m.scaling["default"] * b @ a, m.fan_in_fan_out).to(base.weight))
        self.initial = dict(initial)
