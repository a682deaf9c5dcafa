"""LoRA-FA (Zhang et al. 2023, "LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models
Fine-tuning", arXiv 2308.03303), with PEFT's LoRA-FA optimizer (``peft.optimizers``).

    W + s·B A,   A frozen at its random init,   g_B ← (1/s²) · g_B (A Aᵀ)⁻¹

Only B trains, so the activations entering A need not be kept for A's gradient (the memory saving), and ΔW = s·BA
always lies in the row space of A. PEFT's optimizer (AdamW otherwise) replaces B's gradient by the projection
above: the gradient of B whose ΔW is closest, in Frobenius norm, to full fine-tuning's gradient. Trainable
parameters: B (+ the task head), r·d_out per module. λ scales W_v's B, the only trained factor of W_v.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models.roles import Target
from . import register
from .base import Context
from .capabilities import Capabilities
from .lora import LoraBacked


@register("lorafa")
class LoRAFA(LoraBacked):
    summary = "LoRA-FA (Zhang et al. 2023): LoRA with A frozen; B's gradient projected by PEFT's LoRA-FA optimizer"
    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        model = super().prepare(model, targets, ctx)
        self.frozen_a: dict[str, tuple[torch.nn.Parameter, float]] = {}  # B's name -> (A, the scale s)
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a = module.lora_A["default"].weight
                a.requires_grad_(False)
                self.frozen_a[f"{name}.lora_B.default.weight"] = (a, float(module.scaling["default"]))
        return model

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """PEFT's LoraFAOptimizer over our groups (λ and weight decay kept): it finds each B's A as the parameter
        just before it in its group, so A is put there (it has no gradient and is never updated)."""
        from peft.optimizers.lorafa import LoraFAOptimizer

        out = []
        for g in groups:
            params, names, scales = [], [], []
            for p, n in zip(g["params"], g["names"], strict=True):
                if n in self.frozen_a:
                    a, s = self.frozen_a[n]
                    params.append(a)
                    names.append(n.replace(".lora_B.", ".lora_A."))
                    scales.append(s)
                params.append(p)
                names.append(n)
                scales.append(self.frozen_a[n][1] if n in self.frozen_a else None)
            out.append({**g, "params": params, "names": names, "scaling_factors": scales})
        return LoraFAOptimizer(out, lr=lr, weight_decay=weight_decay)
