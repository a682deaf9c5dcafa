"""What a task kind needs from a run, and what it gives back (the tasks layer's side of the loop).

The training loop passes an object that satisfies :class:`EvalContext`; a kind reads it and *returns* its outcome
(:class:`Evaluation`, :class:`Baseline`), so the tasks layer imports nothing of the loop. A kind sees a task
through :class:`TaskView` (what :class:`~efficientft.tasks.base.Task` offers), so the kinds import no task module:
tasks name their kind, kinds never import tasks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import RunConfig


class TaskView(Protocol):
    """What a task kind reads of a task (:class:`~efficientft.tasks.base.Task` satisfies it)."""

    name: str
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...]
    eval_splits: tuple[str, ...]

    @property
    def is_regression(self) -> bool: ...


class GenerativeTaskView(TaskView, Protocol):
    """What the generation kind reads beyond :class:`TaskView` (:mod:`.generative`'s tasks satisfy it)."""

    default_template: str
    eval_spec: Any
    sets: Any
    takes_train_data: bool


class EvalContext(Protocol):
    """What a task kind reads from a run to evaluate it (the training loop passes an object that satisfies it; the
    tasks layer imports nothing of the loop). A kind reads these and returns its outcome; it writes nothing here."""

    cfg: RunConfig  # read: eval_batch_size, max_length, max_new_tokens, forgetting_file
    task: TaskView
    model: Any  # the model being trained (``torch.nn.Module``)
    tokenizer: Any
    train: Any  # the encoded training split (its labels or answers give the trivial baselines)
    evals: dict[str, Any]  # the encoded evaluation splits, by name
    kind_state: Any  # what the kind's :meth:`~.kinds.TaskKind.before_training` returned as its own state

    @property
    def device(self) -> Any: ...

    @property
    def pad_id(self) -> int: ...

    def autocast(self) -> AbstractContextManager[Any]: ...

    def forward(self, split: str, idx: Any, batch: dict[str, Any]) -> Any:
        """The model's forward on a batch of examples ``idx`` of ``split`` (from cached features where enabled)."""


@dataclass
class Evaluation:
    """What a task kind's evaluation of one split returns: its scores, and what the loop records beside them."""

    scores: dict[str, float]
    predictions: list[dict] | None = None  # one row per example (generation), stored with the run
    cost: dict[str, float] = field(default_factory=dict)  # added up over evaluations (generation_s, generated_tokens)
    # each metric of the split scored on the trivial prediction (majority class, train mean, most frequent answer):
    # what a run must beat to have learned anything (``details.baselines``)
    baselines: dict[str, float] = field(default_factory=dict)
    collapsed: bool | None = None  # the predictions are one class or a constant (``details.collapsed``)


@dataclass
class Baseline:
    """What a task kind measures before the first step: figures to record (``details.info``) and its own state,
    handed back as :attr:`EvalContext.kind_state`."""

    info: dict[str, Any] = field(default_factory=dict)
    state: Any = None
