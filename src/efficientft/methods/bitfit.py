"""BitFit (Ben Zaken, Ravfogel and Goldberg 2022, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL, arXiv 2106.10199).

Only bias terms train, every weight stays frozen (§2: of the model's parameters only the bias vectors b of the
attention, feed-forward and layer-norm transforms ``W x + b`` are updated). Here the biases are those of the
targeted modules (``--targets qv``: the Q and V biases; the paper also studies such subsets), or every bias of
the backbone with targets ``all`` (the paper's main setting, layer-norm biases included);
the task head trains as for every method. λ applies to W_v's bias (it is the only parameter of W_v that trains).
A model without biases in the targeted modules (LLaMA's projections have none) is refused: there would be
nothing to train. The trained model is a plain model (biases are ordinary weights), so merge is the identity and
export is the trained tensors (our safetensors).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.roles import Target, role_targets, summarise_names
from . import register
from .base import Context, Method
from .capabilities import Capabilities


@register("bitfit")
class BitFit(Method):
    lr_prior = (1e-4, 1e-2)  # BitFit (Ben Zaken et al. 2022: 1e-4..1e-3)
    summary = "BitFit (Ben Zaken et al. 2022): only the bias terms of the targets train (targets 'all': every bias)"
    capabilities = Capabilities(targets="linear", all_targets=True, v_role=True, v_bias=True, quantized_base=False,
                                quantized_base_reason="a 4/8-bit layer's bias can train, but no test shows it yet",
                                merge=True, export="efficientft")

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.ctx = ctx
        for p in model.parameters():
            p.requires_grad = False
        self.check_targets(model, targets)  # one role's part of a fused bias (GPT-2 c_attn) is refused
        if targets:
            missing = [t.name for t in targets if getattr(model.get_submodule(t.name), "bias", None) is None]
            if missing:
                raise ConfigError(f"method 'bitfit' trains bias terms only, and the targeted modules "
                                  f"{summarise_names(missing)} have none, so nothing would train; choose "
                                  "targets with biases or another method.")
            self.targets = targets
            biases = [f"{t.name}.bias" for t in targets]
        else:  # targets "all": every bias of the backbone; the role map still says which is W_v's
            heads = tuple(h + "." for h in ctx.heads)
            biases = [n for n, _ in model.named_parameters() if n.endswith(".bias") and not n.startswith(heads)]
            if not biases:
                raise ConfigError("method 'bitfit' trains bias terms only, and this model has none, so nothing "
                                  "would train; choose another method.")
            self.targets = role_targets(model)
        wanted = set(biases)
        for n, p in model.named_parameters():
            if n in wanted or any(n.startswith(h + ".") for h in ctx.heads):
                p.requires_grad = True
        return model

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return None if arch == "llama" else {}  # LLaMA's projections have no biases: refused by design

    def merge(self, model: nn.Module) -> nn.Module:
        """Nothing to fold: the trained biases are the model's own."""
        return model
