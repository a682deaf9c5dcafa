"""Full fine-tuning: the targeted weights themselves train (or every weight, with targets ``all``).

With role targets this is the "Full Fine-tune QKV / QV" of arXiv 2410.02247 Table 2: W_q, W_k, W_v (weights and
biases) train, everything else is frozen but the task head. On a fused projection only the chosen roles' rows
train (:class:`~efficientft.models.fused.SlicedProjection`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..models.fused import SlicedProjection, replace_module
from ..models.roles import Target, role_targets
from . import register
from .base import Context, Method, set_trainable
from .capabilities import Capabilities


@register("full")
class FullFineTuning(Method):
    lr_prior = (1e-5, 1e-4)  # BERT/RoBERTa fine-tuning (Devlin et al. 2019: 2e-5..5e-5)
    summary = "full fine-tuning of the targeted weights (targets 'all': every weight)"
    capabilities = Capabilities(
        all_targets=True, fused_slices=True, merge=True, export="model", quantized_base=False, sharding=True,
        quantized_base_reason="it trains the base weights themselves, which a quantized layer cannot hold as "
                              "trainable full-precision tensors",
    )

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.targets, self.ctx = targets, ctx
        if not targets:  # targets "all": every weight trains; the role map still says which are W_v for λ
            self.targets = role_targets(model)
            for p in model.parameters():
                p.requires_grad = True
            return model
        plain = [t.name for t in targets if t.out_slice is None]
        set_trainable(model, plain + ctx.heads)
        by_module: dict[str, dict[str, tuple[int, int]]] = {}
        for t in targets:
            if t.out_slice is not None:
                by_module.setdefault(t.name, {})[t.role or "slice"] = t.out_slice
        for name, slices in by_module.items():
            replace_module(model, name, SlicedProjection(model.get_submodule(name), slices))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        """Write trained slices back into their fused weights (a plain Hugging Face model again)."""
        for name, m in list(model.named_modules()):
            if isinstance(m, SlicedProjection):
                replace_module(model, name, m.merged())
        return model

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A complete Hugging Face model folder (``save_pretrained``), loadable with ``from_pretrained``."""
        self.merge(model).save_pretrained(str(out_dir))
        return {"format": "huggingface-model"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(out_dir))
