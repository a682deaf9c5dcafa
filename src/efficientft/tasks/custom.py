"""The user's own data: CSV, TSV or JSONL files with named text column(s) and a label column."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .base import DataOptions, Examples, Task, float_labels, label_ids, read_table

FORMATS = (".csv", ".tsv", ".jsonl", ".json")


def _read_records(path: Path) -> tuple[list[str], list[dict], list[str]]:
    """(columns, records, locations) of a CSV / TSV (header line) or JSONL (one object per line) file."""
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records, where = [], []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{n} is not a JSON object ({e.msg}); JSONL wants one per line.") from None
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}:{n} is not a JSON object; JSONL wants one object per line.")
                records.append(obj)
                where.append(f"{path}:{n}")
        columns = sorted({k for r in records for k in r})
        return columns, records, where
    if suffix not in (".csv", ".tsv"):
        raise ConfigError(f"{path}: unknown data format {suffix!r}; accepted: {', '.join(FORMATS)}.")
    rows = read_table(path, "," if suffix == ".csv" else "\t", csv.QUOTE_MINIMAL)
    if not rows:
        raise ConfigError(f"{path} is empty; a header line naming the columns is expected.")
    head = rows[0]
    records = [dict(zip(head, r, strict=False)) for r in rows[1:]]
    return head, records, [f"{path}:{n}" for n in range(2, len(rows) + 1)]


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
        allowed = {"train", "dev", "text_columns", "label_column", "type", "labels", "metrics", "name"}
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(f"unknown key(s) in custom data: {sorted(extra)}; accepted: {sorted(allowed)}.")
        if not spec.get("train") or not spec.get("dev"):
            raise ConfigError("custom data needs both a training file (--train-file) and an evaluation file (--eval-file).")
        text = spec.get("text_columns") or ("text",)
        text = tuple(text.split(",")) if isinstance(text, str) else tuple(text)
        if not 1 <= len(text) <= 2:
            raise ConfigError(f"custom data takes one or two text columns, got {list(text)}.")
        kind = spec.get("type", "classification")
        if kind not in ("classification", "regression"):
            raise ConfigError(f"custom data type {kind!r} is not known; accepted: classification, regression.")
        label_col = spec.get("label_column", "label")
        files = {"train": str(spec["train"]), "dev": str(spec["dev"])}
        labels = tuple(str(x) for x in spec.get("labels") or ())
        if kind == "classification" and not labels:
            cols, recs, _ = _read_records(Path(files["train"]))
            if not recs:
                raise ConfigError(f"{files['train']} has no examples (a header line only, or no JSON lines); the "
                                  "training file needs at least one row per label.")
            _check_columns(Path(files["train"]), cols, text + (label_col,))
            labels = _sorted_labels({str(r.get(label_col, "")).strip() for r in recs})
            if len(labels) < 2:
                raise ConfigError(f"{files['train']}: the label column {label_col!r} has fewer than two distinct values.")
        regression = kind == "regression"
        metrics = tuple(spec.get("metrics") or (("pearson", "spearman") if regression else ("accuracy",)))
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

    def load(self, split: str, data: DataOptions) -> Examples:
        if split not in self.files:
            raise ConfigError(f"custom data has no split {split!r}; it has: {', '.join(self.files)}.")
        path = Path(self.files[split])
        cols, recs, where = _read_records(path)
        _check_columns(path, cols, self.text_columns + (self.label_column,))
        raw = [str(r.get(self.label_column, "")).strip() for r in recs]
        labels = float_labels(raw, where) if self.is_regression else label_ids(raw, self.label_values, where)
        texts = [[str(r.get(c, "")) for r in recs] for c in self.text_columns]
        return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels, (str(path),))


def _check_columns(path: Path, have: list[str], need: tuple[str, ...]) -> None:
    missing = [c for c in need if c not in have]
    if missing:
        raise ConfigError(f"{path}: column(s) {missing} not found; the file has: {', '.join(map(str, have))}.")


def _sorted_labels(values: set[str]) -> tuple[str, ...]:
    values = {v for v in values if v != ""}
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))
