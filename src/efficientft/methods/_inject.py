"""The injection skeleton, once: what every method that wraps its target modules in a module of its own does.

Check the targets (from the declared capabilities), freeze the model but its task head, replace each targeted
module by the method's wrapper around it (:meth:`WrapsTargets.wrap`: the new parameters are the trainable ones),
and merge by folding every wrapper back into its base (the wrapper's ``merged()``). PEFT's ``inject_adapter`` loop
plays this part for the PEFT-backed methods; DoRA, KaSA, PaCA, SoRA, SIFT, SSF and the decomposition methods
(LoLDU, SVFit) are our own code and share this one.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from ..models.fused import replace_module
from ..models.roles import Target
from .base import Context, Method


def freeze_but_heads(model: nn.Module, heads: list[str]) -> None:
    for p in model.parameters():
        p.requires_grad = False
    for head in heads:
        for p in model.get_submodule(head).parameters():
            p.requires_grad = True


def merge_modules(model: nn.Module, kind: type) -> nn.Module:
    """Replace every ``kind`` module by its ``merged()`` base: a plain Hugging Face model again."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]:
        replace_module(model, name, m.merged())
    return model


class WrapsTargets(Method):
    """A method that replaces each targeted module by ``wrapper(base, ...)``, built by :meth:`wrap`.

    Targets are wrapped in their order, one wrapper per module: a module with several targets (one role's rows
    each, of a fused projection, where the capabilities declare ``fused_slices``) gets one wrapper given all of
    them. Parameter names, and so state dicts and exports, are the wrapper's own.
    """

    wrapper: ClassVar[type[nn.Module]]  # the module a target becomes; merge() folds every one back

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        """The wrapper of the module ``base``, given the targets that name it (one, unless fused slices)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.check_targets(model, targets)
        self.targets, self.ctx = targets, ctx
        freeze_but_heads(model, ctx.heads)
        by_module: dict[str, list[Target]] = {}
        for t in targets:
            by_module.setdefault(t.name, []).append(t)
        for name, of_module in by_module.items():
            replace_module(model, name, self.wrap(model.get_submodule(name), of_module))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, self.wrapper)
