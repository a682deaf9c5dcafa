"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021,
arXiv 2101.00190).

    head_i = Attn(x W_q, [P_K; x W_k], [P_V; x W_v]),   P_K, P_V ∈ R^{n×d_kv} per layer, trained

Every attention layer gets n trained key and value vectors (given to the model as ``past_key_values``), which
every real token attends to; the input sequence itself does not grow. Trainable parameters: n × layers × 2 × d_kv
(d_kv = the key/value width: h, or fewer with grouped-query attention), + the task head. ``prefix_projection``
reparameterises P through a 2-layer MLP of width ``encoder_hidden_size`` (the paper's stabiliser; its parameters
then train too). PEFT's ``PrefixTuningConfig``. P_V is not a parameter of W_v: no λ role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from . import register
from ._prompt import PromptArgs, PromptMethod
from .args import BOOL, POSITIVE_INT, arg
from .capabilities import Capabilities


@dataclass
class PrefixArgs(PromptArgs):
    prefix_projection: bool = arg(False, BOOL)
    encoder_hidden_size: int = arg(512, POSITIVE_INT)


@register("prefix_tuning")
class PrefixTuning(PromptMethod):
    summary = "prefix tuning (Li & Liang 2021): n trained key/value vectors in every attention layer, via PEFT"
    Args = PrefixArgs
    capabilities = Capabilities(targets="none", v_role=False, quantized_base=True, export="peft",
                                gradient_checkpointing=False,  # PEFT refuses it: the prefixes enter as a cache
                                classifier_inputs=("past_key_values",))
    peft_config_name = "PrefixTuningConfig"

    def model_sizes(self, model: nn.Module) -> dict[str, int]:
        """PEFT's own reading: a prefix is sized by the attention layers (key/value heads), not the embeddings."""
        return {}

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"prefix_projection": self.args.prefix_projection,
                "encoder_hidden_size": self.args.encoder_hidden_size}
