"""The user's own data: CSV, TSV or JSONL files with named text column(s) and a label column.

Everything about the files and the ``custom:`` spec is checked before training, and each defect is one
:class:`ConfigError` naming the file and line: a misread file (a shifted column, ``1`` and ``1.0`` counted as two
classes, a NaN target) would otherwise train a wrong model whose scores look plausible.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..textfile import describe, jsonl_records, table_records, text_field
from .base import DataOptions, Examples, Task, float_labels, label_ids
from .metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

FORMATS = (".csv", ".tsv", ".jsonl", ".json")
SPEC_KEYS = ("train", "dev", "text_columns", "label_column", "type", "labels", "metrics", "name", "answer")
TYPES = ("classification", "regression", "generation")  # generation: instruction rows (tasks/generative.py)
ANSWER_TYPES = ("number", "choice", "text")
_COLUMN_KEYS = ("text_columns", "label_column", "labels", "metrics")  # what only classification / regression reads


def _read_records(path: Path) -> tuple[list[str], list[dict], list[str]]:
    """(columns, records, locations) of a CSV / TSV (header line) or JSONL (one object per line) file."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"{path}: unknown data format {suffix!r}; accepted: {', '.join(FORMATS)}.")
    if suffix in (".jsonl", ".json"):
        return jsonl_records(path)
    return table_records(path, "," if suffix == ".csv" else "\t")


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A list of names given as a comma-separated string or a list of strings."""
    if isinstance(value, str):
        out = tuple(v.strip() for v in value.split(","))
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        out = tuple(v.strip() for v in value)
    else:
        raise ConfigError(f"custom data {key} must be a name or a list of names, got {describe(value)}.")
    if not out:
        raise ConfigError(f"custom data {key} is an empty list; give at least one name.")
    if any(not v for v in out):
        raise ConfigError(f"custom data {key} has an empty name: {describe(value)}.")
    return out


def check_spec(spec: dict) -> None:
    """Check a ``custom:`` mapping without reading its files: keys, value types, task type, labels and metrics.

    RunConfig calls this on construction, so a bad spec fails before a run key or anything else is computed.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"custom must be a mapping ({', '.join(SPEC_KEYS[:-1])}), got {describe(spec)}.")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"unknown key {describe(key)} in custom data.{did_you_mean(str(key), SPEC_KEYS)} "
                              f"Accepted keys: {', '.join(SPEC_KEYS)}.")
    for key in ("train", "dev", "label_column", "name"):
        v = spec.get(key)
        if key in ("train", "dev") and isinstance(v, os.PathLike):
            continue
        if v is not None and not (isinstance(v, str) and v.strip()):
            raise ConfigError(f"custom data {key} must be a non-empty string, got {describe(v)}.")
    if spec.get("text_columns") is not None:
        text = _names(spec["text_columns"], "text_columns")
        if not 1 <= len(text) <= 2:
            raise ConfigError(f"custom data takes one or two text columns, got {len(text)}: {', '.join(text)}.")
        _check_roles(text, spec.get("label_column", "label"))
    kind = spec.get("type", "classification")
    if kind not in TYPES:
        raise ConfigError(f"custom data type {describe(kind)} is not known; accepted: {', '.join(TYPES)}.")
    if kind == "generation":
        extra = [k for k in _COLUMN_KEYS if spec.get(k) is not None]
        if extra:
            raise ConfigError(f"custom data {extra[0]} is for classification / regression files; generation rows have "
                              "fixed keys (instruction, input, output, answer): drop it.")
        if spec.get("answer", "text") not in ANSWER_TYPES:
            raise ConfigError(f"custom data answer {describe(spec.get('answer'))} is not known; accepted: "
                              f"{', '.join(ANSWER_TYPES)}.")
        return
    if spec.get("answer") is not None:
        raise ConfigError("custom data answer (--answer) is for generation data; add --kind generation.")
    if spec.get("labels") is not None:
        if kind == "regression":
            raise ConfigError("custom data labels lists the classes of a classification task; a regression task "
                              "has none (drop labels, or drop type: regression).")
        _declared_labels(spec["labels"])
    if spec.get("metrics") is not None:
        _metrics(spec["metrics"], kind)


def _check_roles(text: tuple[str, ...], label_col: str) -> None:
    """A column is either text or the label, once: the label as input would leak the answer into the model."""
    if len(set(text)) != len(text):
        raise ConfigError(f"custom data text_columns names {text[0]!r} twice; give two different columns or one.")
    if label_col in text:
        raise ConfigError(f"custom data column {label_col!r} is both a text column and the label column; the "
                          "model would read the answer. Give another --label-column or --text-columns.")


def _metrics(value: Any, kind: str) -> tuple[str, ...]:
    names = _names(value, "metrics")
    fits, other = ((REGRESSION_METRICS, CLASSIFICATION_METRICS) if kind == "regression"
                   else (CLASSIFICATION_METRICS, REGRESSION_METRICS))
    for m in names:
        if m in other:
            raise ConfigError(f"metric {m!r} does not fit a {kind} task; accepted for {kind}: {', '.join(fits)}.")
        if m not in fits:
            raise ConfigError(f"unknown metric {m!r}.{did_you_mean(m, fits)} Accepted for {kind}: "
                              f"{', '.join(fits)}.")
    return names


def _declared_labels(value: Any) -> tuple[str, ...]:
    """The classes listed under ``labels``, as the strings they must match in the files."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"custom data labels must be a list of the class labels, got {describe(value)}.")
    out, where = [], []
    for i, v in enumerate(value):
        if isinstance(v, bool):
            raise ConfigError(f"custom data labels: item {i + 1} is {describe(v)} (YAML reads yes/no/on/off/true/"
                              "false as booleans); quote it ('yes') to mean the text.")
        if not isinstance(v, (str, int, float)):
            raise ConfigError(f"custom data labels: item {i + 1} is {describe(v)}; a label is a string or a number.")
        if not str(v).strip():
            raise ConfigError(f"custom data labels: item {i + 1} is empty; a label needs a name.")
        out.append(str(v).strip())
        where.append(f"custom data labels, item {i + 1}")
    labels = _distinct(out, where)
    if len(labels) < 2:
        raise ConfigError(f"custom data labels lists {len(labels)} distinct label(s); classification needs at "
                          "least two (for a numeric target use type: regression).")
    return tuple(labels)


def _number(label: str) -> float | None:
    """The number a label spells (``1``, ``1.0``, ``true`` all spell 1), or None for a text label."""
    low = label.lower()
    if low in ("true", "false"):
        return float(low == "true")
    try:
        x = float(label)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _distinct(labels: list[str], where: list[str]) -> list[str]:
    """The distinct labels in first-seen order; two spellings of one number (``1`` and ``1.0``) are an error."""
    first: dict[str, str] = {}
    by_number: dict[float, str] = {}
    for lab, w in zip(labels, where, strict=True):
        if lab in first:
            continue
        first[lab] = w
        x = _number(lab)
        if x is None:
            continue
        if x in by_number:
            other = by_number[x]
            raise ConfigError(f"label {lab!r} at {w} and label {other!r} at {first[other]} spell the same number; "
                              "write every label of one class the same way.")
        by_number[x] = lab
    return list(first)


def _label_text(value: Any, where: str) -> str:
    """A label field as the string that names its class; null, empty, lists and mappings are errors."""
    if value is None:
        raise ConfigError(f"{where}: the label is null; every example needs a label.")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: the label is {describe(value)}; a label is a string or a number.")
    if not value.strip():
        raise ConfigError(f"{where}: the label is empty; every example needs a label.")
    return value.strip()


def _sorted_labels(values: list[str]) -> tuple[str, ...]:
    """Numbers sorted numerically when every label is a finite number, otherwise sorted as text."""
    nums = [_number(v) for v in values]
    if all(x is not None for x in nums) and not any(v.lower() in ("true", "false") for v in values):
        return tuple(v for _, v in sorted(zip(nums, values, strict=True)))
    return tuple(sorted(values))


@dataclass
class CustomTask(Task):
    """A classification or regression task over the user's files.

    Classification labels are the distinct values of the label column in the training file (numbers sorted
    numerically, otherwise as text) unless ``labels`` lists them; an evaluation label outside that set is an error.
    """

    files: dict[str, str] = field(default_factory=dict)
    text_columns: tuple[str, ...] = ()
    label_column: str = "label"
    label_values: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: dict) -> CustomTask:
        check_spec(spec)
        if not spec.get("train") or not spec.get("dev"):
            raise ConfigError("custom data needs both a training file (--train-file) and an evaluation file (--eval-file).")
        text = _names(spec.get("text_columns") or "text", "text_columns")
        kind = spec.get("type", "classification")
        label_col = spec.get("label_column", "label")
        _check_roles(text, label_col)
        files = {"train": str(spec["train"]), "dev": str(spec["dev"])}
        regression = kind == "regression"
        labels: tuple[str, ...] = ()
        if not regression:
            labels = (_declared_labels(spec["labels"]) if spec.get("labels") is not None
                      else cls._train_labels(Path(files["train"]), text, label_col))
        metrics = _metrics(spec["metrics"], kind) if spec.get("metrics") else (
            ("pearson", "spearman") if regression else ("accuracy",))
        if "f1" in metrics and len(labels) != 2:
            raise ConfigError(f"metric 'f1' scores the positive class of a two-class task; this task has "
                              f"{len(labels)} labels ({', '.join(labels)}). Use accuracy or mcc.")
        return cls(
            name=spec.get("name", "custom"),
            description=f"user data {files['train']} ({kind})",
            num_labels=1 if regression else len(labels),
            metrics=metrics,
            main_metric=metrics[0],
            label_names=labels,
            files=files,
            text_columns=text,
            label_column=label_col,
            label_values=labels,
        )

    @staticmethod
    def _train_labels(path: Path, text: tuple[str, ...], label_col: str) -> tuple[str, ...]:
        cols, recs, where = _read_records(path)
        if not recs:
            raise ConfigError(f"{path} has no examples (a header line only, or no JSON lines); the "
                              "training file needs at least one row per label.")
        _check_columns(path, cols, text + (label_col,))
        raw = [_label_text(_field(r, label_col, w), w) for r, w in zip(recs, where, strict=True)]
        labels = _distinct(raw, where)
        if len(labels) < 2:
            raise ConfigError(f"{path}: the label column {label_col!r} has only one distinct label ({labels[0]!r}); "
                              "classification needs at least two. For a numeric target declare type: regression "
                              "(--regression).")
        return _sorted_labels(labels)

    def load(self, split: str, data: DataOptions) -> Examples:
        if split not in self.files:
            raise ConfigError(f"custom data has no split {split!r}; it has: {', '.join(self.files)}.")
        path = Path(self.files[split])
        cols, recs, where = _read_records(path)
        _check_columns(path, cols, self.text_columns + (self.label_column,))
        texts: list[list[str]] = [[] for _ in self.text_columns]
        raw = []
        for r, w in zip(recs, where, strict=True):
            for col, name in zip(texts, self.text_columns, strict=True):
                col.append(_text(_field(r, name, w), name, w))
            value = _field(r, self.label_column, w)
            if self.is_regression and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise ConfigError(f"{w}: the label is {describe(value)}; a regression label is a number.")
            raw.append(_label_text(value, w))
        if self.is_regression:
            labels = float_labels(raw, where)
        else:
            self._check_spellings(raw, where)
            labels = label_ids(raw, self.label_values, where)
        return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels, (str(path),))

    def _check_spellings(self, raw: list[str], where: list[str]) -> None:
        """A label that spells a known class's number differently (``1.0`` for ``1``) gets its own message."""
        known = {_number(v): v for v in self.label_values if _number(v) is not None}
        for r, w in zip(raw, where, strict=True):
            x = _number(r)
            if r not in self.label_values and x is not None and x in known:
                raise ConfigError(f"label {r!r} at {w} spells the same number as the label {known[x]!r} of the "
                                  "task; write every label of one class the same way.")


def _field(record: dict, name: str, where: str) -> Any:
    if name not in record:
        raise ConfigError(f"{where}: no {name!r} field; every example needs it (this line has: "
                          f"{', '.join(map(str, record))}).")
    return record[name]


def _text(value: Any, name: str, where: str) -> str:
    return text_field(value, name, where)


def _check_columns(path: Path, have: list[str], need: tuple[str, ...]) -> None:
    missing = [c for c in need if c not in have]
    if missing:
        hint, suffix = "", path.suffix.lower()
        if len(have) == 1 and suffix in (".csv", ".tsv"):  # the delimiter of the other format: misnamed file
            sep, name, ext = ("\t", "tab", ".tsv") if suffix == ".csv" else (",", "comma", ".csv")
            if sep in have[0]:
                hint = f" The header looks {name}-separated: name the file {ext}."
        if have and have[0].lstrip().startswith("{") and suffix in (".csv", ".tsv"):
            hint = " The file looks like JSON Lines: name it .jsonl."
        raise ConfigError(f"{path}: column(s) {missing} not found; the file has: {', '.join(map(str, have))}.{hint}")
