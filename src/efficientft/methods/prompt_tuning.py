"""Prompt tuning (Lester, Al-Rfou & Constant 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
EMNLP 2021, arXiv 2104.08691).

    input = [P; E(x)],   P ∈ R^{n×h} trained,  E and every weight of the model frozen

n soft-prompt vectors are prepended to the input embeddings; the sequence grows by n positions. Trainable
parameters: n × h (+ the task head). See :mod:`efficientft.methods._prompt` for targets, λ and merging. PEFT's
``PromptTuningConfig`` (num_virtual_tokens, random init).
"""

from __future__ import annotations

from typing import Any

from . import register
from ._prompt import PromptArgs, PromptMethod
from .capabilities import Capabilities


@register("prompt_tuning")
class PromptTuning(PromptMethod):
    lr_prior = (1e-3, 3e-1)  # prompt tuning (Lester et al. 2021: 0.3)
    summary = "prompt tuning (Lester et al. 2021): n trained virtual-token embeddings prepended to the input, via PEFT"
    Args = PromptArgs
    capabilities = Capabilities(targets="none", v_role=False, quantized_base=True, export="peft")
    peft_config_name = "PromptTuningConfig"

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"prompt_tuning_init": "RANDOM"}
