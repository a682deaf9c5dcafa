"""TEMPORARY stand-in for i-caps' PeftMethod (removed at the merge): PEFT config -> wrap -> export/reload/merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from .base import Context, Method
from .lora import adapter_kwargs


class PeftMethod(Method):
    def peft_config(self, model: nn.Module, targets: list[Target], ctx: Context) -> Any:
        raise NotImplementedError

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        pass

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import get_peft_model

        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
        return get_peft_model(model, self.peft_config(model, targets, ctx))

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        model.save_pretrained(str(out_dir), save_embedding_layers=False)
        return {"format": "peft-adapter"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import PeftModel

        self.targets, self.ctx = targets, ctx
        return PeftModel.from_pretrained(base, str(out_dir))


def module_kwargs(model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
    return adapter_kwargs(model, targets, ctx)
