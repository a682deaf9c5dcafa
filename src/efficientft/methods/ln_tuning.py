"""LayerNorm tuning (Qi, Shi et al. 2022, "Parameter-Efficient Tuning on Layer Normalization for Pre-trained
Language Models", arXiv 2211.08682; also Zhao et al. 2023, "Tuning LayerNorm in Attention", arXiv 2312.11420).

    LN(x) = γ ⊙ (x − μ)/σ + β,   only γ and β (of every normalisation layer) and the task head train

No module is targeted: the method changes a fixed set of parameters, every LayerNorm / RMSNorm of the backbone
(RMSNorm has γ only), so ``--targets`` is refused unless left at its default. Norm weights never carry W_v's role,
so λ ≠ 1 is refused. PEFT's ``LNTuningConfig`` trains a copy of each norm layer; merging swaps the copies in
(and the trained head, which PEFT's LN-tuning unload leaves in its ``modules_to_save`` wrapper).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..models.fused import replace_module
from ..models.roles import Target
from ..strategy import is_norm
from . import register
from .base import Context, NoArgs
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@register("ln_tuning")
class LNTuning(PeftMethod):
    summary = "LayerNorm tuning (Qi et al. 2022): only the gains and biases of every normalisation layer train, via PEFT"
    Args = NoArgs
    capabilities = Capabilities(targets="none", v_role=False, merge=True, export="peft", quantized_base=True)
    peft_config_name = "LNTuningConfig"

    def merge(self, model: nn.Module) -> nn.Module:
        from peft.utils import ModulesToSaveWrapper

        merged = model.merge_and_unload()
        for name, m in list(merged.named_modules()):
            if isinstance(m, ModulesToSaveWrapper):
                replace_module(merged, name, m.modules_to_save[m.active_adapters[0]])
        return merged

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        heads = tuple(ctx.heads)  # the head trains in full (modules_to_save); its norms, if any, with it
        return {"target_modules": [n for n, m in model.named_modules() if is_norm(m) and not n.startswith(heads)]}
