"""What a task is: how to read its splits, how many labels it has, and which metrics score it."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import Examples  # the type lives in the core (data); tasks.Examples is its old name
from ..errors import ConfigError, not_a_folder
from ..textfile import csv_rows

if TYPE_CHECKING:
    from .kinds import TaskKind

ENV_DATA_DIR = "EFT_DATA_DIR"


@dataclass
class DataOptions:
    """Where data comes from: a local folder in the ``glue_data`` layout, or the Hugging Face hub."""

    data_dir: str | None = None
    source: str = "local"  # local | hub
    train_data: str | None = None  # a generation suite's training set: a file, or a named source

    def glue_dir(self) -> Path:
        d = self.data_dir or os.environ.get(ENV_DATA_DIR)
        if not d:
            raise ConfigError(
                "no GLUE data directory: pass --data-dir DIR or set EFT_DATA_DIR to a folder in the standard "
                "glue_data layout (RTE/train.tsv, RTE/dev.tsv, ...), or use --data-source hub when online."
            )
        p = Path(d).expanduser()
        if not p.is_dir():
            raise not_a_folder("data directory", p, f"from --data-dir or {ENV_DATA_DIR}")
        return p


@dataclass
class Task:
    """A task: its label space, its metrics and how to read each split.

    ``num_labels == 1`` means regression. ``eval_splits`` are the official evaluation splits (``dev``, and
    ``dev_mm`` for MNLI mismatched); scores are stored as ``<split>/<metric>``.
    """

    name: str
    description: str
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] = ()
    eval_splits: tuple[str, ...] = ("dev",)
    comparable: bool = True  # False when the evaluation split is not the official one (sampled data)
    splits: tuple[str, ...] = field(default=("train", "dev"))

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def kind(self) -> TaskKind:
        """What kind of task this is (:mod:`.kinds`): the loop asks it how to load, encode, train and evaluate."""
        from .kinds import CLASSIFICATION

        return CLASSIFICATION

    def load(self, split: str, data: DataOptions) -> Examples:  # pragma: no cover - abstract
        raise NotImplementedError


def read_table(path: Path, delimiter: str = "\t", quoting: int = csv.QUOTE_NONE) -> list[list[str]]:
    """Rows of a delimited UTF-8 file. GLUE files are read with quoting off: quotes there are ordinary text."""
    return [row for _, row in csv_rows(path, delimiter, quoting)]


def label_ids(raw: list[str], values: tuple[str, ...], where: list[str]) -> list[int]:
    """Map raw label strings to class ids; an unknown label is an error naming the file, line and accepted set."""
    index = {v: i for i, v in enumerate(values)}
    out = []
    for r, w in zip(raw, where, strict=True):
        if r not in index:
            raise ConfigError(
                f"label {r!r} at {w} is not in the task's label set; accepted labels: {', '.join(values)}."
            )
        out.append(index[r])
    return out


def float_labels(raw: list[str], where: list[str]) -> list[float]:
    """Regression targets; a NaN or infinite target is refused here, since it would only show up as a NaN loss."""
    out = []
    for r, w in zip(raw, where, strict=True):
        try:
            x = float(r)
        except ValueError:
            raise ConfigError(f"label {r!r} at {w} is not a number; this is a regression task.") from None
        if not math.isfinite(x):
            raise ConfigError(f"label {r!r} at {w} is not a finite number; a regression label must be finite.")
        out.append(x)
    return out
