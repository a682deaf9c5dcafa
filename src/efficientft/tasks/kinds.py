"""Task kinds: everything that differs between classification/regression and generation, behind one object.

A task declares its kind (:attr:`Task.kind`); the loop (:mod:`efficientft.train`), the step and the model loader
ask the kind and never test which kind it is:

==========================  ==================================  ================================================
question                    classification / regression         generation (:mod:`.generative_kind`)
==========================  ==================================  ================================================
model class                 ``AutoModelForSequenceClassification``  ``AutoModelForCausalLM``
extra trained modules       the task head (``classifier``...)   none (GPT-2's ``lm_head`` is the embeddings)
PEFT task type              ``SEQ_CLS``                         ``CAUSAL_LM``
encode / collate            text(s) -> ids, one label           template(prompt) + output + EOS, labels -100
loss units (accumulation)   examples                            target tokens
evaluation                  argmax / regression outputs         greedy generation + answer extraction
metrics, higher is better   GLUE metrics, all higher            exact match (higher), LM loss (lower)
frozen-feature cache        yes                                 no (KV-cached decoding re-runs every layer)
==========================  ==================================  ================================================

Classification is today's behaviour moved here unchanged (the same encoding cache, the same evaluation); its run
keys and scores are what they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.loading import SEQUENCE_CLASSIFICATION, resolve_head
from ..vocab import higher_is_better

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data import Encoded
    from .context import Baseline, EvalContext, Evaluation, TaskView


class TaskKind:
    """The contract every kind answers (the defaults are classification's); it is the model loader's
    :class:`~efficientft.models.loading.HeadSpec` (``name``, ``model_class``, ``configure``, ``configure_tokenizer``)."""

    name: ClassVar[str] = ""
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    supports_feature_cache: ClassVar[bool] = True

    def model_class(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    no_feature_cache_reason: ClassVar[str] = ""

    def resolve(self, cfg: RunConfig, task: TaskView) -> dict[str, Any]:
        """Settings this kind fills in before the run key is computed (or refuses, with one line)."""
        return {}

    def resolve_head(self, cfg: RunConfig) -> dict[str, Any]:
        """The ``head`` setting made explicit for the run's model (or refused, with one line); none by default."""
        if cfg.head != "auto":
            raise ConfigError(f"head is a setting of classification tasks (how the classifier reads the encoder); a "
                              f"{self.name} task reads the model's own output; drop head {cfg.head!r}.", field="head")
        return {}

    def readout(self, cfg: RunConfig) -> str | None:
        """How the loaded classifier reads the encoder (:func:`efficientft.models.load_model`'s ``readout``)."""
        return None

    def check_method(self, method: Any) -> None:
        """Refuse, in one line, a method whose declared capabilities do not cover this kind."""

    def configure(self, config: Any, num_labels: int) -> None:
        """Set what the model's config must say for this kind before the weights load (labels, problem type)."""

    def configure_tokenizer(self, tokenizer: Any) -> None:
        """Give the tokenizer the special tokens this kind needs (generation: an EOS token)."""

    def heads(self, model: nn.Module) -> list[str]:
        """Top-level modules outside the backbone that train with every method (the task head)."""
        from ..models.roles import head_modules

        return head_modules(model)

    def encode(self, task: TaskView, examples: Any, tokenizer: Any, cfg: RunConfig, model: nn.Module,
               split: str) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """The units a micro-batch's loss is a mean over, so accumulation weights micro-batches by them."""
        return int(batch["labels"].shape[0])

    def evaluate(self, p: EvalContext, split: str) -> Evaluation:  # pragma: no cover - abstract
        """Scores of the current model on one evaluation split, with what the loop records beside them."""
        raise NotImplementedError

    def summarise(self, p: EvalContext, scores: dict[str, float]) -> dict[str, float]:
        """Scores derived from all splits' scores (a suite's average); none by default."""
        return {}

    def summarise_baselines(self, p: EvalContext, baselines: dict[str, float]) -> dict[str, float]:
        """The trivial baselines of what :meth:`summarise` derives, from the splits' (``<split>/<metric>``)."""
        return {}

    def before_training(self, p: EvalContext) -> Baseline | None:
        """Measure what must be measured on the model before its first step (the forgetting baseline)."""
        return None

    def higher_is_better(self, metric: str) -> bool:
        """Whether a larger ``metric`` is better: the core's one answer (:func:`efficientft.vocab.higher_is_better`)."""
        return higher_is_better(metric)

    def check_max_length(self, cfg: RunConfig, tokenizer: Any, examples: Any) -> None:
        """Refuse a ``max_length`` the encoding cannot work with, naming the minimum."""


class ClassificationKind(TaskKind):
    """Sequence classification and regression: a ``*ForSequenceClassification`` model with a task head."""

    name = "classification"
    # settings that only a generation task reads: given to a classification task they would silently do nothing
    GENERATION_SETTINGS: ClassVar[tuple[str, ...]] = ("template", "train_on_inputs", "max_new_tokens", "train_data",
                                                      "forgetting_file")

    def resolve(self, cfg: RunConfig, task: TaskView) -> dict[str, Any]:
        from ..config import DEFAULTS

        for name in self.GENERATION_SETTINGS:
            if getattr(cfg, name) != DEFAULTS[name]:
                raise ConfigError(f"{name} is a setting of generation tasks; task {task.name!r} is a "
                                  f"{'regression' if task.is_regression else 'classification'} task (see `eft tasks`).")
        return {}

    def resolve_head(self, cfg: RunConfig) -> dict[str, Any]:
        """The head the model's architecture takes for ``cfg.head`` (auto: its declared default), read from the
        model's files; a head it cannot take is one line naming those it can."""
        return {"head": resolve_head(cfg.head, cfg.model)}

    def readout(self, cfg: RunConfig) -> str | None:
        return cfg.head

    def model_class(self) -> Any:
        return SEQUENCE_CLASSIFICATION.model_class()

    def configure(self, config: Any, num_labels: int) -> None:
        SEQUENCE_CLASSIFICATION.configure(config, num_labels)

    def check_max_length(self, cfg: RunConfig, tokenizer: Any, examples: Any) -> None:
        from ..config import check_max_length

        check_max_length(cfg.max_length, tokenizer, pair=examples.text_b is not None)

    def encode(self, task: TaskView, examples: Any, tokenizer: Any, cfg: RunConfig, model: nn.Module,
               split: str) -> Encoded:
        import inspect

        from ..data import encode

        with_types = ("token_type_ids" in inspect.signature(model.forward).parameters
                      and "token_type_ids" in tokenizer.model_input_names)
        return encode(examples, tokenizer, cfg.max_length, with_types)

    @torch.no_grad()
    def evaluate(self, p: EvalContext, split: str) -> Evaluation:
        """Argmax (or the regression output) over length-sorted batches, scored by the task's metrics; with each
        metric's trivial baseline (the training split's majority class or mean) and whether the predictions
        collapsed to one class or a constant."""
        from ..data import eval_batches
        from .context import Evaluation
        from .metrics import collapsed, compute, trivial_baselines

        model, enc = p.model, p.evals[split]
        was_training = model.training
        model.eval()
        preds = np.zeros(len(enc), dtype=np.float64)
        for idx, batch in eval_batches(enc, p.cfg.eval_batch_size, p.pad_id):
            batch = {k: v.to(p.device) for k, v in batch.items() if k != "labels"}
            logits = p.forward(split, idx, batch).logits.float()
            out = logits[:, 0] if p.task.is_regression else logits.argmax(-1)
            preds[idx] = out.cpu().numpy()
        model.train(was_training)
        gold = enc.labels
        regression = p.task.is_regression
        pred = preds if regression else preds.astype(np.int64)
        return Evaluation(compute(p.task.metrics, pred, gold),
                          baselines=trivial_baselines(p.task.metrics, p.train.labels, gold, regression),
                          collapsed=collapsed(pred, gold, regression))


CLASSIFICATION = ClassificationKind()


def kind_of(task: TaskView) -> TaskKind:
    """The kind a task declares (classification unless it says otherwise)."""
    return getattr(task, "kind", None) or CLASSIFICATION
