"""PEFT-backed methods: the PEFT plumbing in one place, so that a PEFT tuner here is its config (and a test).

:class:`PeftMethod` builds the tuner's config (PEFT's task type from ``ctx.peft_task_type``, the targeted modules,
the task head as ``modules_to_save``, ``fan_in_fan_out`` for GPT-2's Conv1D), wraps the model with
``get_peft_model`` (which freezes everything but the adapter and the head), gives the λ strategy the roles of the
trainable parameters (those inside W_v's module have role ``v``: :func:`efficientft.strategy.roles_by_name`),
exports a PEFT adapter folder (``save_pretrained``), reloads it with ``PeftModel.from_pretrained`` and merges with
``merge_and_unload`` where the method's capabilities say ``merge``. Fields a config class does not have (prompt
tuning has no ``target_modules``) are not passed to it.

A new PEFT tuner is one file like this (VeRA; its test then checks its defining property)::

    from dataclasses import dataclass

    from ..schema import Rule
    from . import register
    from .args import POSITIVE_INT, MethodArgs, arg
    from .capabilities import Capabilities
    from .peft_backed import PeftMethod


    @dataclass
    class VeraArgs(MethodArgs):
        rank: int = arg(16, POSITIVE_INT)  # each field's rule: type, range, canonical form (methods/args.py)
        d_initial: float = arg(0.1, Rule("float"))  # initial value of the trained scaling vector d


    @register("vera")
    class VeRA(PeftMethod):
        summary = "VeRA (Kopiczko et al. 2024): frozen shared random A, B; trained scaling vectors d, b, via PEFT"
        capabilities = Capabilities(rank=True, merge=True, export="peft")
        Args = VeraArgs
        peft_config_name = "VeraConfig"  # a class exported by ``peft``

        def config_kwargs(self, model, targets, ctx):
            return {"r": self.args.rank, "d_initial": self.args.d_initial}

The capabilities are declared, not inherited (``register`` refuses a class without its own): ``rank`` makes
:meth:`Method.check_targets` refuse a rank larger than a target, ``fused_slices`` stays False (PEFT cannot adapt
one role's rows of GPT-2's fused ``c_attn``), ``targets="none"`` and ``v_role=False`` for prompt-type tuners.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import is_conv1d
from ..models.roles import Target
from .base import Context, Method


class PeftMethod(Method):
    """A method that is one PEFT tuner: subclasses give :attr:`peft_config_name` and :meth:`config_kwargs`."""

    # The PEFT config class, by its name in the ``peft`` package ("LoraConfig", "VeraConfig" ...).
    peft_config_name: ClassVar[str] = ""

    def config_class(self) -> type:
        """The PEFT config dataclass (looked up lazily, so importing a method file does not import PEFT)."""
        import peft

        return getattr(peft, self.peft_config_name)

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        """The tuner's own config fields (rank, dropout, init ...); the shared ones come from :meth:`shared_kwargs`."""
        return {}

    def shared_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        """The fields every PEFT-backed method sets the same way: the task, the targeted modules, the trained head,
        and the transposed layout of GPT-2's Conv1D; each only where the config class has the field."""
        kwargs: dict[str, Any] = {"task_type": ctx.peft_task_type, "modules_to_save": list(ctx.heads)}
        if self.capabilities.targets != "none":
            kwargs["target_modules"] = [t.name for t in targets]
            if any(is_conv1d(model.get_submodule(t.name)) for t in targets):
                kwargs["fan_in_fan_out"] = True
        names = {f.name for f in dataclasses.fields(self.config_class())}
        return {k: v for k, v in kwargs.items() if k in names}

    def peft_config(self, model: nn.Module, targets: list[Target], ctx: Context) -> Any:
        """The PEFT config to inject; a value PEFT refuses becomes one ConfigError line naming the config."""
        cls = self.config_class()
        kwargs = {**self.shared_kwargs(model, targets, ctx), **self.config_kwargs(model, targets, ctx)}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method {self.name!r}: PEFT's {cls.__name__} refused the arguments: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def before_wrap(self, model: nn.Module, config: Any) -> None:
        """A last change to the config before PEFT builds the layers (LoRA registers its fast layer here)."""

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import get_peft_model

        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
        config = self.peft_config(model, targets, ctx)
        self.before_wrap(model, config)
        return get_peft_model(model, config)

    def merge(self, model: nn.Module) -> nn.Module:
        """PEFT's ``merge_and_unload`` (where the capabilities declare ``merge``): a plain transformers model."""
        if not self.capabilities.merge:
            return super().merge(model)
        return model.merge_and_unload()

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A PEFT adapter folder, loadable with ``peft.PeftModel.from_pretrained(base_model, out_dir)``."""
        model.save_pretrained(str(out_dir), save_embedding_layers=False)  # no hub lookup for the vocabulary
        return {"format": "peft-adapter"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(out_dir))


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
