"""LoRA (Hu et al., 2021, arXiv 2106.09685): W x + (α/r) B A x with A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, B = 0 at init.

A thin wrapper over PEFT's implementation. The variants that PEFT also implements (rsLoRA, DoRA, PiSSA, OLoRA, EVA,
LoRA+) subclass :class:`LoRA` and change only :meth:`LoRA.peft_kwargs` or a hook. With the attention strategy, W_v's
A and B learn at λ × the base rate (see :mod:`efficientft.strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import out_major_weight
from ..models.roles import Target
from . import register
from .base import Context, Method, positive_int


@dataclass
class LoraArgs:
    rank: int = 8
    alpha: float | None = None  # None: α = r, so the scale α/r is 1 (LoRA's GLUE setting for RoBERTa-base)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        positive_int("rank", self.rank)
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")


@register("lora")
class LoRA(Method):
    summary = "LoRA (Hu et al. 2021): W + (alpha/r)·BA on the targets, via PEFT"
    Args = LoraArgs

    @property
    def alpha(self) -> float:
        return float(self.args.alpha if self.args.alpha is not None else self.args.rank)

    def peft_kwargs(self) -> dict[str, Any]:
        """Extra ``LoraConfig`` fields of a variant (``use_rslora``, ``use_dora``, ``init_lora_weights`` ...)."""
        return {}

    @property
    def max_rank(self) -> int:
        """The largest rank any adapted module may get (AdaLoRA starts above its target rank, EVA redistributes)."""
        return self.args.rank

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        if any(t.out_slice is not None for t in targets):
            raise ConfigError(
                f"method {self.name!r} wraps PEFT, which cannot adapt part of a fused projection "
                f"({targets[0].name}); use module-name patterns that select whole modules."
            )
        for t in targets:
            w = out_major_weight(model.get_submodule(t.name))
            if self.max_rank > min(w.shape):
                raise ConfigError(
                    f"rank {self.max_rank} is larger than {t.name} allows ({tuple(w.shape)}: at most {min(w.shape)})."
                )

    def peft_config(self, model: nn.Module, targets: list[Target], ctx: Context) -> Any:
        """The PEFT config to inject; variants with their own PEFT config class (AdaLoRA, (IA)³) override this."""
        from peft import LoraConfig

        return LoraConfig(r=self.args.rank, lora_alpha=self.alpha, lora_dropout=self.args.dropout,
                          **adapter_kwargs(model, targets, ctx), **self.peft_kwargs())

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import get_peft_model

        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
        return get_peft_model(model, self.peft_config(model, targets, ctx))

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A PEFT adapter folder, loadable with ``peft.PeftModel.from_pretrained(base_model, out_dir)``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        return {"format": "peft-adapter", "files": sorted(p.name for p in out_dir.iterdir())}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(out_dir))


def adapter_kwargs(model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
    """The PEFT config fields every adapter shares: the task, the targeted modules and the trained head."""
    return {
        "task_type": "SEQ_CLS",
        "target_modules": [t.name for t in targets],
        "modules_to_save": list(ctx.heads),
        "fan_in_fan_out": any(type(model.get_submodule(t.name)).__name__ == "Conv1D" for t in targets),
    }
