"""(IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", NeurIPS 2022, arXiv 2205.05638).

Learned vectors rescale activations element-wise: in the paper, keys and values of attention (l_k ⊙ K, l_v ⊙ V)
and the intermediate activation of the feed-forward block (l_ff ⊙ γ(W₁x), the input of W₂). Only these vectors
train; they start at ones, so the model computes exactly the base model at init. Merging multiplies them into the
weights (PEFT's ``IA3Config``).

Roles: a vector scales the *output* of every targeted module, except ``ffn_down`` (W₂), whose *input* it scales —
that is the paper's l_ff, so ``ffn_down`` modules are PEFT's ``feedforward_modules``. ``ffn_up``/``ffn_gate`` are
scaled at their output, like the attention projections; module-name patterns without a role also scale outputs.
The paper's own placement is ``--targets k,v,ffn_down``; with any targets, λ multiplies the learning rate of
W_v's vector (it is W_v's only trainable parameter).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from .base import Context, NoArgs
from .capabilities import Capabilities
from .peft_backed import PeftMethod

FEEDFORWARD_ROLES = ("ffn_down",)


@register("ia3")
class IA3(PeftMethod):
    """PEFT's ``IA3Config``; the plumbing (export as a PEFT adapter folder, reload, merge) is PeftMethod's."""
    lr_prior = (1e-3, 1e-2)  # (IA)³ (Liu et al. 2022: 3e-3)

    summary = "(IA)3 (Liu et al. 2022): learned vectors rescale the targets' activations (ones at init), via PEFT"
    capabilities = Capabilities(quantized_base=True, merge=True, export="peft")
    Args = NoArgs

    peft_config_name = "IA3Config"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"init_ia3_weights": True,
                "feedforward_modules": [t.name for t in targets if t.role in FEEDFORWARD_ROLES]}
