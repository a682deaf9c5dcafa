"""P-tuning (Liu et al. 2021, "GPT Understands, Too", arXiv 2103.10385; AI Open 2023).

    input = [h₁ … h_n; E(x)],   h = MLP(e₁ … e_n)  (or a bidirectional LSTM followed by an MLP)

Like prompt tuning, n virtual tokens are prepended to the input embeddings (the sequence grows by n), but they are
produced by a trained prompt encoder from n trained embeddings, which the paper found trains more stably. Trainable
parameters: n × h embeddings + the encoder (+ the task head); after training only the encoder's output is needed.
PEFT's ``PromptEncoderConfig`` (encoder_reparameterization_type MLP | LSTM, encoder_hidden_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..schema import Rule
from . import register
from ._prompt import PromptArgs, PromptMethod
from .args import POSITIVE_INT, arg
from .capabilities import Capabilities

ENCODERS = ("MLP", "LSTM")


@dataclass
class PTuningArgs(PromptArgs):
    encoder: str = arg("MLP", Rule("text"))  # PEFT's names, upper-case
    encoder_hidden_size: int = arg(128, POSITIVE_INT)

    def check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}.")


@register("p_tuning")
class PTuning(PromptMethod):
    summary = "P-tuning (Liu et al. 2021): n virtual tokens from a trained prompt encoder (MLP/LSTM), via PEFT"
    Args = PTuningArgs
    capabilities = Capabilities(targets="none", v_role=False, quantized_base=True, export="peft")
    peft_config_name = "PromptEncoderConfig"

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"encoder_reparameterization_type": self.args.encoder,
                "encoder_hidden_size": self.args.encoder_hidden_size}
