"""LoRA (Hu et al., 2021, arXiv 2106.09685): W x + (α/r) B A x with A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, B = 0 at init.

A thin wrapper over PEFT's implementation. The variants that PEFT also implements (rsLoRA, DoRA, PiSSA, OLoRA, EVA,
LoRA+) subclass :class:`LoRA` and change only :meth:`LoRA.peft_kwargs` or a hook. With the attention strategy, W_v's
A and B learn at λ × the base rate (see :mod:`efficientft.strategy`).

PEFT cannot adapt part of a fused projection (GPT-2's ``c_attn`` = [W_q | W_k | W_v]). When a target is such a
slice, every target is adapted by our own :class:`~efficientft.models.fused.FusedLoRA` instead (one adapter per
role, added into that role's rows, as the original LoRA's ``MergedLinear``), exported as our own safetensors.
Only variants that set ``sliced = True`` in their class body take that path; the others refuse sliced targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from ..errors import ConfigError
from ..lowrank import use_fast_lora
from ..models.fused import FusedLoRA, replace_module, weight_shape
from ..models.large import is_quantized
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
    summary = "LoRA (Hu et al. 2021): W + (alpha/r)·BA on the targets, via PEFT (fused GPT-2 slices: our own)"
    supports_quantized_base = True
    Args = LoraArgs
    supports_sharding = True  # tests/test_sharding.py
    # Does our FusedLoRA implement this variant on slices of fused projections? Subclasses must opt in.
    sliced: ClassVar[bool] = True
    # PEFT's LoRA layers with our plain-LoRA forward (efficientft.lowrank: the same function, a faster backward).
    fast_forward: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "sliced" not in cls.__dict__:
            cls.sliced = False

    @property
    def alpha(self) -> float:
        return float(self.args.alpha if self.args.alpha is not None else self.args.rank)

    def peft_kwargs(self) -> dict[str, Any]:
        """Extra ``LoraConfig`` fields of a variant (``use_rslora``, ``use_dora``, ``init_lora_weights`` ...)."""
        return {}

    def fused_scale(self) -> float:
        """The factor of ``B A`` in :class:`FusedLoRA` (α/r; a variant that opts in may change it)."""
        return self.alpha / self.args.rank

    @property
    def max_rank(self) -> int:
        """The largest rank any adapted module may get (AdaLoRA starts above its target rank, EVA redistributes)."""
        return self.args.rank

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        sliced = [t for t in targets if t.out_slice is not None]
        if sliced and not self.sliced:
            t = sliced[0]
            raise ConfigError(
                f"method {self.name!r} wraps PEFT, which cannot adapt part of a fused projection ({t.name}, role "
                f"{t.role!r}), and has no fused implementation here; use method 'lora', or module-name patterns "
                f"that select whole modules."
            )
        for t in targets:
            out_f, in_f = weight_shape(model.get_submodule(t.name))
            rows = (t.out_slice[1] - t.out_slice[0]) if t.out_slice else out_f
            if self.max_rank > min(rows, in_f):
                what = f"the {t.role!r} rows of {t.name}" if t.out_slice else t.name
                shape = (rows, in_f)
                raise ConfigError(f"rank {self.max_rank} is larger than {what} allows ({shape}: at most {min(shape)}).")

    def peft_config(self, model: nn.Module, targets: list[Target], ctx: Context) -> Any:
        """The PEFT config to inject; variants with their own PEFT config class (AdaLoRA, (IA)³) override this."""
        from peft import LoraConfig

        return LoraConfig(r=self.args.rank, lora_alpha=self.alpha, lora_dropout=self.args.dropout,
                          **adapter_kwargs(model, targets, ctx), **self.peft_kwargs())

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import get_peft_model

        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
        if _fused(targets):
            return self._prepare_fused(model, targets, ctx)
        config = self.peft_config(model, targets, ctx)
        # not AdaLoRA's or (IA)³'s own configs; not over bitsandbytes layers (PEFT's own bnb LoRA layers go there)
        if self.fast_forward and type(config).__name__ == "LoraConfig" and not is_quantized(model):
            use_fast_lora(config)
        return get_peft_model(model, config)

    def _prepare_fused(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        """Our own LoRA on every target (some are slices of a fused projection); the task head trains fully."""
        for p in model.parameters():
            p.requires_grad = False
        by_module: dict[str, dict[str, tuple[int, int]]] = {}
        for t in targets:
            rows = t.out_slice or (0, weight_shape(model.get_submodule(t.name))[0])
            by_module.setdefault(t.name, {})[t.role or "all"] = rows
        for name, slices in by_module.items():
            module = FusedLoRA(model.get_submodule(name), slices, self.args.rank, self.fused_scale(),
                               self.args.dropout)
            replace_module(model, name, module)
        for head in ctx.heads:
            for p in model.get_submodule(head).parameters():
                p.requires_grad = True
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        if not _is_peft(model):  # our fused LoRA: fold each B A into its rows, give back the plain modules
            for name, m in list(model.named_modules()):
                if isinstance(m, FusedLoRA):
                    replace_module(model, name, m.merged())
            return model
        return model.merge_and_unload()

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A PEFT adapter folder, loadable with ``peft.PeftModel.from_pretrained(base_model, out_dir)``.

        PEFT cannot describe adapters on fused slices; those models are saved in our own format (the trained
        tensors as safetensors, :meth:`Method.export`) and rebuilt by :meth:`reload`.
        """
        if not _is_peft(model):
            return super().write_export(model, out_dir)
        model.save_pretrained(str(out_dir), save_embedding_layers=False)  # no hub lookup for the vocabulary
        return {"format": "peft-adapter"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        if _fused(targets):
            return super().reload(base, out_dir, targets, ctx)
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(out_dir))


def _fused(targets: list[Target]) -> bool:
    return any(t.out_slice is not None for t in targets)


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_kwargs(model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
    """The PEFT config fields every adapter shares: the task, the targeted modules and the trained head."""
    return {
        "task_type": ctx.peft_task_type,
        "target_modules": [t.name for t in targets],
        "modules_to_save": list(ctx.heads),
        "fan_in_fan_out": any(type(model.get_submodule(t.name)).__name__ == "Conv1D" for t in targets),
    }
