"""What the prompt-type methods (prompt tuning, prefix tuning, P-tuning) share: they change the sequence, not the
weights.

The base model's weights are untouched: trained vectors enter as n virtual tokens prepended to the input embeddings
(prompt tuning, P-tuning) or as n extra key/value positions in every attention layer (prefix tuning,
``past_key_values``). So there is no target module (``--targets`` is refused unless left at its default), no
W_v role (λ ≠ 1 is refused in one line), and nothing to merge into weights. The trainable-parameter count of a run
is the virtual tokens' parameters (plus the task head, and P-tuning's prompt encoder). The task type (sequence
classification or causal LM) is the task kind's, via ``ctx.peft_task_type``.

Caveat: PEFT feeds a decoder classifier (LLaMA, GPT-2) ``inputs_embeds``, so the classifier reads the last
position, which is padding in a right-padded batch; on encoders (BERT) the head reads [CLS] and is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.roles import Target
from .args import POSITIVE_INT, MethodArgs, arg
from .base import Context
from .peft_backed import PeftMethod


@dataclass
class PromptArgs(MethodArgs):
    num_virtual_tokens: int = arg(20, POSITIVE_INT)


class PromptMethod(PeftMethod):
    """PEFT's prompt-learning configs: the virtual-token count (the task type and the head are PeftMethod's)."""

    def prompt_kwargs(self) -> dict[str, Any]:
        """The config fields of one prompt-type method beyond ``num_virtual_tokens``."""
        return {}

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"num_virtual_tokens": self.args.num_virtual_tokens, **self.model_sizes(model), **self.prompt_kwargs()}

    def model_sizes(self, model: nn.Module) -> dict[str, int]:
        """The sizes PEFT needs, read from the model: it looks for them in the config's dict under a few names
        (``hidden_size``, ``n_embd``, ``d_model``), which DistilBERT's lacks (``dim``, ``n_layers``, ``n_heads``:
        "Please specify `token_dim`"). Virtual tokens enter beside the input embeddings, so a token is as wide as
        they are; layers and heads are read through the config's standard attribute names."""
        config = model.config
        sizes = {"num_layers": getattr(config, "num_hidden_layers", None),
                 "num_attention_heads": getattr(config, "num_attention_heads", None)}
        embeddings = model.get_input_embeddings()
        sizes["token_dim"] = getattr(embeddings, "embedding_dim", None)
        return {k: v for k, v in sizes.items() if isinstance(v, int) and not isinstance(v, bool)}

    def extra_positions(self) -> int:
        """The virtual tokens take positions (prefix tuning's too: the input's positions start after them)."""
        return int(self.args.num_virtual_tokens)

    def merge(self, model: nn.Module) -> nn.Module:
        raise ConfigError(f"method {self.name!r} changes the input sequence, not the weights: it has nothing to "
                          "merge; export its adapter instead.")
