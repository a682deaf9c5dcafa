"""DePT, Decomposed Prompt Tuning (Shi & Lipani 2024, "DePT: Decomposed Prompt Tuning for Parameter-Efficient
Fine-tuning", ICLR 2024, arXiv 2309.05173; reference code github.com/ZhengxiangShi/DePT, ``PromptTuningLoRAConfig``).

Prompt tuning's n-token prompt is decomposed into a shorter prompt P ∈ R^{m×d} and a low-rank update of the frozen
input embeddings X ∈ R^{s×d} of the s positions of an input (the paper's decomposition, written out; the
reference's ``PeftModel.forward`` for ``PROMPT_TUNING_LORA`` computes exactly this)::

    X' = X + (α/√r) · A B,   A ∈ R^{s×r},  B ∈ R^{r×d};      input = [P; X']

with the same trainable count as prompt tuning at n = m + r(s + d)/d (the reference's run script: T5-base,
d = 768, ``MAX_LENGTH`` s = 256, m = 40, r = 45: 76,800 parameters, prompt tuning's at n = 100). The update is
*positional*: row i of A B is added to the embedding at position i of every input, whatever its token; s is the
run's max_length (the reference sets it to ``max_seq_length``), so a shorter, dynamically padded batch uses the
first rows (the reference pads to s; the extra rows of a padded position are masked out there, so the outputs are
the same). A is drawn as a Kaiming-uniform matrix (a = √5) and B is zero, so training starts at plain prompt
tuning; the scale is α/√r with the reference's α = 8. The prompt starts random (the reference's default, without
``--text_init``).

The two parts learn at two rates (the paper's "two different learning rates"; the reference's ``train.py``
builds two AdamW groups, ``lora_embedding_lr`` for A and B): the run's
``lr`` for the prompt (and the task head), ``embedding_lr`` for A and B. Both follow the run's schedule, as both
groups do under the reference's linear scheduler.

Capabilities: no target module and no W_v parameter (λ ≠ 1 is refused); nothing to merge into the weights
(the prompt lengthens the input); export in our format (the prompt, A, B and the head), reloaded on a fresh base.
Classification only: the update is indexed by position, so left-padded batched generation and incremental
decoding (one new position per step) would add the wrong rows; ``generation`` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.roles import Target
from ..strategy import Strategy
from . import register
from ._prompt import PromptMethod
from .args import POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context, Method
from .capabilities import Capabilities

UPDATE = "dept_update"  # the module holding A and B, attached to the base model


@dataclass
class DePTArgs(MethodArgs):
    num_virtual_tokens: int = arg(40, POSITIVE_INT)  # m, the shorter prompt
    rank: int = arg(45, POSITIVE_INT)  # r of the embedding update A B
    alpha: float = arg(8.0, POSITIVE)  # the update is scaled by alpha / sqrt(rank)
    embedding_lr: float = arg(5.0e-4, POSITIVE)  # the learning rate of A and B (the prompt's is the run's lr)


class EmbeddingUpdate(nn.Module):
    """The positional low-rank update (α/√r) A B of the input embeddings (row i: position i)."""

    def __init__(self, rows: int, dim: int, rank: int, alpha: float, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rows, rank, dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(rank, dim, dtype=like.dtype, device=like.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(rank)

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.A @ self.B)



class UpdatedEmbeddings(nn.Module):
    """The word embeddings as the prompt-tuning wrapper calls them on ``input_ids``: E(x) + the update's first L rows.

    Only that call gets the update: a hook on the embedding layer would fire on every use of it (GPT-2 also embeds
    its token-type ids with the word embeddings), and the prompt's own embeddings are not the model's.
    """

    def __init__(self, embeddings: nn.Module, update: EmbeddingUpdate) -> None:
        super().__init__()
        self.embeddings = embeddings
        self._update = [update]  # not a submodule: A and B are registered once, on the model

    @property
    def weight(self) -> torch.Tensor:
        return self.embeddings.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.embeddings(input_ids)
        update = self._update[0]
        length = out.shape[-2]
        if length > update.A.shape[0]:
            raise ConfigError(f"method 'dept': an input of {length} positions is longer than its embedding update "
                              f"({update.A.shape[0]} rows, the run's max_length).")
        return out + update.delta()[:length].to(out.dtype)


@register("dept")
class DePT(PromptMethod):
    summary = ("DePT (Shi & Lipani 2024): a shorter prompt + positional low-rank update A·B of the input embeddings, "
               "two learning rates")
    Args = DePTArgs
    capabilities = Capabilities(targets="none", v_role=False, generation=False, export="efficientft",
                                quantized_base_reason="its embedding update has not been tested on a quantized "
                                "base")
    peft_config_name = "PromptTuningConfig"

    def prompt_kwargs(self) -> dict[str, Any]:
        return {"prompt_tuning_init": "RANDOM"}

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"num_virtual_tokens": 4, "rank": 4}

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        rows = ctx.max_length
        if rows <= 0:
            raise ConfigError("method 'dept' needs the run's max_length (its embedding update has one row per "
                              "position).")
        emb = model.get_input_embeddings()
        dim = emb.weight.shape[1]
        if self.args.rank > min(rows, dim):
            raise ConfigError(f"rank {self.args.rank} is larger than DePT's embedding update allows "
                              f"({rows} positions x {dim} features: at most {min(rows, dim)}).")
        like = emb.weight if emb.weight.is_floating_point() else torch.empty(0)
        update = EmbeddingUpdate(rows, dim, self.args.rank, self.args.alpha, like)
        model.add_module(UPDATE, update)
        model = super().prepare(model, targets, ctx)
        model.word_embeddings = UpdatedEmbeddings(model.word_embeddings, update)
        for p in update.parameters():
            p.requires_grad = True
        return model

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """A and B learn at ``embedding_lr``: their factor is embedding_lr / lr (the run's lr, given to
        :meth:`param_groups`)."""
        lr = getattr(self, "_lr", None)
        if not lr:
            return {}
        return {n: self.args.embedding_lr / lr for n, p in model.named_parameters()
                if p.requires_grad and f"{UPDATE}." in n}

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        self._lr = lr
        return super().param_groups(model, strategy, lr, weight_decay)

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        info = Method.write_export(self, model, out_dir)
        return {**info, "format": "efficientft-dept"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        """Our export on a fresh base; the update's rows (the trained run's max_length) are read from the file."""
        from dataclasses import replace

        from safetensors import safe_open

        from .base import TRAINABLE_FILE

        with safe_open(str(out_dir / TRAINABLE_FILE), "pt") as f:
            rows = [f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(f"{UPDATE}.A")]
        if not rows:
            raise ConfigError(f"{out_dir}: not a DePT export (no {UPDATE}.A tensor).")
        return Method.reload(self, base, out_dir, [], replace(ctx, max_length=rows[0]))  # it targets nothing
