"""LoRA (Hu et al., 2021, arXiv 2106.09685): W x + (α/r) B A x with A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, B = 0 at init.

A thin use of PEFT's implementation through :class:`~efficientft.methods.peft_backed.PeftMethod`. The parts every
PEFT-LoRA method shares (the arguments, α, the ``LoraConfig``, our fast LoRA layer) are :class:`LoraBacked`; the
variants PEFT implements (rsLoRA, PiSSA, OLoRA, EVA, LoRA+) are its subclasses and change only :meth:`peft_kwargs`
or a hook; none inherits from :class:`LoRA` itself. With the attention strategy, W_v's A and B learn at λ × the base
rate (see :mod:`efficientft.strategy`).

PEFT cannot adapt part of a fused projection (GPT-2's ``c_attn`` = [W_q | W_k | W_v]). When a target is such a
slice, every target is adapted by our own :class:`~efficientft.models.fused.FusedLoRA` instead (one adapter per
role, added into that role's rows, as the original LoRA's ``MergedLinear``), exported as our own safetensors: the
:class:`FusedSlices` mixin, used by methods that declare ``fused_slices`` (LoRA, rsLoRA, LoRA+); the others refuse
sliced targets (:meth:`Method.check_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..lowrank import use_fast_lora
from ..models.fused import FusedLoRA, replace_module, weight_shape
from ..models.large import is_quantized
from ..models.roles import Target
from . import register
from .args import FRACTION, OPTIONAL_POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context, Method
from .capabilities import Capabilities
from .peft_backed import PeftMethod, is_peft


@dataclass
class LoraArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)
    alpha: float | None = arg(None, OPTIONAL_POSITIVE)  # None: α = r, so the scale α/r is 1 (LoRA's GLUE setting)
    dropout: float = arg(0.0, FRACTION)


class LoraBacked(PeftMethod):
    """PEFT's ``LoraConfig`` from :class:`LoraArgs` (rank, α, dropout) plus a variant's :meth:`peft_kwargs`,
    built with our plain-LoRA forward (:func:`efficientft.lowrank.use_fast_lora`: the same function, a faster
    backward) except over bitsandbytes layers, where PEFT's own quantized LoRA layers go."""
    lr_prior = (1e-4, 3e-3)  # LoRA (Hu et al. 2021: 2e-4..5e-4 on GLUE) and its variants

    Args = LoraArgs
    peft_config_name = "LoraConfig"

    @property
    def alpha(self) -> float:
        return float(self.args.alpha if self.args.alpha is not None else self.args.rank)

    def peft_kwargs(self) -> dict[str, Any]:
        """Extra ``LoraConfig`` fields of a variant (``use_rslora``, ``init_lora_weights`` ...)."""
        return {}

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"r": self.args.rank, "lora_alpha": self.alpha, "lora_dropout": self.args.dropout,
                **self.peft_kwargs()}

    def before_wrap(self, model: nn.Module, config: Any) -> None:
        if not is_quantized(model):
            use_fast_lora(config)


class FusedSlices:
    """Mixin before :class:`LoraBacked`: targets that are slices of a fused projection get our FusedLoRA
    (prepare, merge, export in our format, reload); whole modules go to PEFT as usual."""

    def fused_scale(self) -> float:
        """The factor of ``B A`` in :class:`FusedLoRA` (α/r; a variant may change it, rsLoRA: α/√r)."""
        return self.alpha / self.args.rank

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        if not _fused(targets):
            return super().prepare(model, targets, ctx)
        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
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
        if is_peft(model):
            return super().merge(model)
        for name, m in list(model.named_modules()):  # our fused LoRA: fold each B A into its rows
            if isinstance(m, FusedLoRA):
                replace_module(model, name, m.merged())
        return model

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """PEFT cannot describe adapters on fused slices; those models are saved in our own format (the trained
        tensors as safetensors, :meth:`Method.write_export`) and rebuilt by :meth:`reload`."""
        if is_peft(model):
            return super().write_export(model, out_dir)
        return Method.write_export(self, model, out_dir)

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        if _fused(targets):
            return Method.reload(self, base, out_dir, targets, ctx)
        return super().reload(base, out_dir, targets, ctx)


@register("lora")
class LoRA(FusedSlices, LoraBacked):
    summary = "LoRA (Hu et al. 2021): W + (alpha/r)·BA on the targets, via PEFT (fused GPT-2 slices: our own)"
    capabilities = Capabilities(fused_slices=True, rank=True, quantized_base=True, merge=True, export="peft",
                                sharding=True)  # tests/test_sharding.py


def _fused(targets: list[Target]) -> bool:
    return any(t.out_slice is not None for t in targets)
