"""The GLUE tasks (Wang et al., 2019), read from a local ``glue_data`` folder or from the Hugging Face hub.

Local files are read exactly as the official download script writes them: tab-separated, quoting off, MRPC with a
byte-order mark, CoLA without a header. Class ids follow the hub's ``nyu-mll/glue`` ClassLabel order so that local
and hub runs are interchangeable.

Main metrics follow the convention of LoRA (Hu et al., 2021, §5) used by the reference paper: Matthews correlation
for CoLA, Pearson correlation for STS-B, accuracy elsewhere (MNLI: matched; mismatched is reported beside it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..textfile import read_text, text_field
from .base import DataOptions, Examples, Task, float_labels, label_ids, read_table

HUB_DATASET = "nyu-mll/glue"


@dataclass
class GlueTask(Task):
    folder: str = ""
    files: dict[str, str] = field(default_factory=dict)  # split -> file name in the task folder
    header: bool = True
    columns: tuple = ()  # text column(s) then label column: header names, or indices when there is no header
    label_values: tuple[str, ...] = ()  # raw label strings in class-id order; empty for regression
    hub_config: str = ""
    hub_splits: dict[str, str] = field(default_factory=dict)
    hub_fields: tuple[str, ...] = ()

    def load(self, split: str, data: DataOptions) -> Examples:
        if split not in self.files:
            raise ConfigError(f"task {self.name!r} has no split {split!r}; it has: {', '.join(self.files)}.")
        if data.source == "hub":
            return self._load_hub(split)
        if data.source != "local":
            raise ConfigError(f"unknown data source {data.source!r}; accepted: local, hub.")
        root = data.glue_dir()
        path = root / self.folder / self.files[split]
        if not path.is_file():
            raise ConfigError(
                f"{self.name}: {path} is missing. The data directory must hold {self.folder}/{self.files[split]} "
                f"(glue_data layout).{self._missing_hint()}"
            )
        return self._parse(read_table(path), str(path))

    def _missing_hint(self) -> str:
        if self.name in ("qnli", "qqp", "mnli"):
            return f" Offline, the task {self.name}-sample trains on the sampled rows in partial/ (not comparable)."
        return " Use --data-source hub to read the hub copy when online."

    def _parse(self, rows: list[list[str]], path: str) -> Examples:
        first = 1 if self.header else 0
        if self.header:
            head = rows[0] if rows else []
            try:
                idx = [head.index(c) for c in self.columns]
            except ValueError:
                raise ConfigError(
                    f"{path}: header {head} lacks a column the {self.name} reader needs: {list(self.columns)}."
                ) from None
        else:
            idx = list(self.columns)
        width = len(rows[0]) if rows else 0
        if rows and max(idx) >= width:
            raise ConfigError(f"{path}:{first + 1}: {width} column(s), but the {self.name} reader takes column "
                              f"{max(idx) + 1}; is this the {self.folder} file of the glue_data layout?")
        texts: list[list[str]] = [[] for _ in idx[:-1]]
        raw, where, skipped = [], [], 0
        for n, row in enumerate(rows[first:], start=first + 1):
            if len(row) != width:  # a damaged row (e.g. a tab missing); the official readers skip these too
                skipped += 1
                continue
            for col, i in zip(texts, idx[:-1], strict=True):
                col.append(row[i])
            raw.append(row[idx[-1]].strip())
            where.append(f"{path}:{n}")
        labels = float_labels(raw, where) if self.is_regression else label_ids(raw, self.label_values, where)
        return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels, (path,), skipped)

    def _load_hub(self, split: str) -> Examples:  # pragma: no cover - needs the network
        from datasets import load_dataset

        ds = load_dataset(HUB_DATASET, self.hub_config, split=self.hub_splits[split])
        cols = [list(ds[f]) for f in self.hub_fields]
        labels = [float(x) for x in ds["label"]] if self.is_regression else [int(x) for x in ds["label"]]
        return Examples(cols[0], cols[1] if len(cols) > 1 else None, labels, (f"hub:{HUB_DATASET}/{self.hub_config}/{split}",))


@dataclass
class GlueSampleTask(Task):
    """A GLUE task trained on a sampled part of the official training split (the ``partial/`` folder).

    Only for machines without the full files: numbers are not comparable with published GLUE results unless the
    evaluation split is the official dev set (QNLI), and the store records ``comparable`` accordingly.
    """

    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # split -> (kind, relative path)
    label_values: tuple[str, ...] = ()
    glue: GlueTask | None = None

    def load(self, split: str, data: DataOptions) -> Examples:
        if split not in self.sources:
            raise ConfigError(f"task {self.name!r} has no split {split!r}; it has: {', '.join(self.sources)}.")
        if data.source != "local":
            raise ConfigError(f"task {self.name!r} reads the local partial/ folder only; use --data-source local.")
        kind, rel = self.sources[split]
        path = data.glue_dir() / rel
        if kind == "official":
            assert self.glue is not None
            return self.glue._parse(read_table(path), str(path))
        if not path.is_file():
            raise ConfigError(f"{self.name}: {path} is missing (the partial/ folder of the offline GLUE copy).")
        text = read_text(path)  # its own errors (not UTF-8, not a file) stand as they are
        try:
            records = json.loads(text)
            keys = sorted(records, key=int)
            rows = [(str(records[k]["label"]), records[k]["text_a"], records[k]["text_b"]) for k in keys]
        except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, not numbered records, a field missing
            raise ConfigError(f"{path}: not the partial/ sample layout (a JSON object of numbered records, each "
                              "with text_a, text_b and label); fetch the file again.") from None
        where = [f"{path}:{k}" for k in keys]
        for (_, a, b), w in zip(rows, where, strict=True):  # the same checks as every other training row
            text_field(a, "text_a", w)
            text_field(b, "text_b", w)
        labels = label_ids([r[0] for r in rows], self.label_values, where)
        return Examples([r[1] for r in rows], [r[2] for r in rows], labels, (str(path),))


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")
_ACC = ("accuracy",)


def _glue(name, description, folder, columns, labels, metrics=_ACC, main="accuracy", header=True, hub=(), names=(),
          files=None, hub_splits=None) -> GlueTask:
    files = files or {"train": "train.tsv", "dev": "dev.tsv"}
    return GlueTask(
        name=name,
        description=description,
        num_labels=len(labels) or 1,
        metrics=metrics,
        main_metric=main,
        label_names=names or labels,
        eval_splits=tuple(s for s in files if s != "train"),
        splits=tuple(files),
        folder=folder,
        files=files,
        header=header,
        columns=columns,
        label_values=labels,
        hub_config=name,
        hub_splits=hub_splits or {"train": "train", "dev": "validation"},
        hub_fields=hub,
    )


GLUE_TASKS: list[GlueTask] = [
    _glue("cola", "CoLA: grammatical acceptability of one sentence (MCC)", "CoLA", (3, 1), _BIN,
          ("mcc", "accuracy"), "mcc", header=False, hub=("sentence",), names=("unacceptable", "acceptable")),
    _glue("sst2", "SST-2: sentiment of one movie-review sentence (accuracy)", "SST-2", ("sentence", "label"), _BIN,
          hub=("sentence",), names=("negative", "positive")),
    _glue("mrpc", "MRPC: are two sentences paraphrases? (accuracy, F1)", "MRPC",
          ("#1 String", "#2 String", "Quality"), _BIN, ("accuracy", "f1"), hub=("sentence1", "sentence2"),
          names=("not_equivalent", "equivalent")),
    _glue("stsb", "STS-B: similarity of two sentences, 0-5 (regression; Pearson, Spearman)", "STS-B",
          ("sentence1", "sentence2", "score"), (), ("pearson", "spearman"), "pearson", hub=("sentence1", "sentence2")),
    _glue("qqp", "QQP: are two questions duplicates? (accuracy, F1)", "QQP",
          ("question1", "question2", "is_duplicate"), _BIN, ("accuracy", "f1"), hub=("question1", "question2"),
          names=("not_duplicate", "duplicate")),
    _glue("mnli", "MNLI: entailment / neutral / contradiction (matched and mismatched accuracy)", "MNLI",
          ("sentence1", "sentence2", "gold_label"), _NLI3, hub=("premise", "hypothesis"),
          files={"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mm": "dev_mismatched.tsv"},
          hub_splits={"train": "train", "dev": "validation_matched", "dev_mm": "validation_mismatched"}),
    _glue("qnli", "QNLI: does the sentence answer the question? (accuracy)", "QNLI",
          ("question", "sentence", "label"), _NLI2, hub=("question", "sentence")),
    _glue("rte", "RTE: does the premise entail the hypothesis? (accuracy)", "RTE",
          ("sentence1", "sentence2", "label"), _NLI2, hub=("sentence1", "sentence2")),
    _glue("wnli", "WNLI: Winograd-schema entailment (accuracy)", "WNLI", ("sentence1", "sentence2", "label"), _BIN,
          hub=("sentence1", "sentence2"), names=("not_entailment", "entailment")),
]

_by_name = {t.name: t for t in GLUE_TASKS}


def _sample(name: str, base: str, dev: tuple[str, str], comparable: bool, labels: tuple[str, ...]) -> GlueSampleTask:
    g = _by_name[base]
    return GlueSampleTask(
        name=name,
        description=f"{g.description.split(':')[0]} trained on the 8,999-row sample of the official train split"
        + ("; official dev set" if comparable else "; evaluated on a disjoint 1,000-row train sample (NOT GLUE dev)"),
        num_labels=g.num_labels,
        metrics=g.metrics,
        main_metric=g.main_metric,
        label_names=g.label_names,
        comparable=comparable,
        sources={"train": ("json", f"partial/{g.folder}/official_train_sample_8999.json"), "dev": dev},
        label_values=labels,
        glue=g,
    )


SAMPLE_TASKS: list[GlueSampleTask] = [
    _sample("qnli-sample", "qnli", ("official", "QNLI/dev.tsv"), True, _NLI2),
    _sample("qqp-sample", "qqp", ("json", "partial/QQP/official_train_sample_1000.json"), False, _BIN),
    _sample("mnli-sample", "mnli", ("json", "partial/MNLI/official_train_sample_1000.json"), False, _NLI3),
]
