"""Generation tasks: GSM8K, the LLM-Adapters math and commonsense suites, their per-task training sources, the
synthetic instruction tasks, and the user's own instruction files.

A generation task is data: where each split comes from, the answer filter and ``max_new_tokens`` of each
evaluation set, and its default prompt template. A suite task (``math``, ``commonsense``) trains once and evaluates
on every set of its suite; its evaluation splits are the sets' names and ``dev/exact_match`` is their average.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..textfile import read_text
from .base import DataOptions, Examples, Task
from .instruct import ANSWER_FILTERS, TRAIN_FILES
from .kinds import TaskKind


class InstructExamples(Examples):
    """A split of instruction examples (:class:`~efficientft.tasks.instruct.InstructExample` rows), sampled and
    split like any other split."""

    def __init__(self, rows: list, files: tuple[str, ...] = (), skipped_rows: int = 0) -> None:
        self.rows = list(rows)
        self.text_a, self.text_b = [r.instruction for r in self.rows], None
        self.labels = [r.output for r in self.rows]
        self.files, self.skipped_rows = tuple(files), skipped_rows

    def subset(self, indices) -> InstructExamples:
        return InstructExamples([self.rows[i] for i in indices], self.files, self.skipped_rows)


Reader = Callable[[DataOptions], tuple[list, str]]  # rows and the file they came from


@dataclass(frozen=True)
class EvalSpec:
    """How one evaluation set is read and judged."""

    read: Reader
    filter: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    extra: bool = False  # scored, but not in the suite's average (MathQA, as in LLM-Adapters' tables)


@dataclass
class InstructTask(Task):
    """A generation task. ``train`` reads the training split (None: it must come from ``--train-data``)."""

    train: Reader | None = None
    sets: dict[str, EvalSpec] = field(default_factory=dict)
    default_template: str = "alpaca"
    takes_train_data: bool = False  # a suite: --train-data names its training set (a file or a source)
    train_filter: str = "text"  # the filter of a selection split carved from train

    @property
    def kind(self) -> TaskKind:
        from .generative_kind import GENERATION

        return GENERATION

    def eval_spec(self, split: str) -> tuple[str, int, tuple[str, ...]]:
        if split in self.sets:
            s = self.sets[split]
            return s.filter, s.max_new_tokens, s.stop
        first = next(iter(self.sets.values()))  # the selection split carved from train
        return self.train_filter, first.max_new_tokens, first.stop

    def load(self, split: str, data: DataOptions) -> Examples:
        if split == "train":
            rows, path = self._train_rows(data)
        elif split in self.sets:
            rows, path = self.sets[split].read(data)
        else:
            raise ConfigError(f"task {self.name!r} has no split {split!r}; it has: train, {', '.join(self.sets)}.")
        return InstructExamples(rows, (path,) if path else ())

    def _train_rows(self, data: DataOptions) -> tuple[list, str]:
        if self.takes_train_data and data.train_data:
            return read_train_data(data.train_data)
        if self.train is None:
            raise ConfigError(f"task {self.name!r} trains on a set that is not on this machine: pass --train-data "
                              f"with its file ({self.description.split('; train: ')[-1]}), or a source: "
                              f"{', '.join(SOURCES)}.")
        return self.train(data)


# ---------------------------------------------------------------------------------------------- readers
def _gsm8k(name: str) -> Reader:
    def read(data: DataOptions) -> tuple[list, str]:
        from .instruct import gsm8k_dir, read_gsm8k

        path = gsm8k_dir() / name
        return read_gsm8k(path), str(path)

    return read


def _adapters(rel: str) -> Reader:
    def read(data: DataOptions) -> tuple[list, str]:
        from .instruct import llm_adapters_dir, read_llm_adapters

        path = llm_adapters_dir() / rel
        return read_llm_adapters(path), str(path)

    return read


def _synthetic(name: str, n: int, seed: int) -> Reader:
    def read(data: DataOptions) -> tuple[list, str]:
        from .synthetic import make_synthetic

        return make_synthetic(name, n, seed), ""

    return read


TITLES = {"boolq": "BoolQ", "arc_e": "ARC-e", "arc_c": "ARC-c", "obqa": "OBQA"}
# The per-task training splits that are on this machine (LLM-Adapters' layout), usable as --train-data sources.
SOURCES = TRAIN_FILES


def read_train_data(spec: str) -> tuple[list, str]:
    """A suite's training set: a named source (:data:`SOURCES`) or the user's file. A MetaMathQA file (rows with
    ``query`` and ``response``) is read as instruction = query, output = response."""
    if spec.lower() in SOURCES:
        return _adapters(SOURCES[spec.lower()])(DataOptions())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--train-data {spec!r} is neither a file nor a source ({', '.join(SOURCES)}).")
    if _is_metamath(path):
        return _read_metamath(path), str(path)
    from .instruct import read_instruct_file

    return read_instruct_file(path, "text"), str(path)


def _is_metamath(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    return '"query"' in head and '"response"' in head and '"instruction"' not in head


def _read_metamath(path: Path) -> list:
    from .instruct import InstructExample

    text = read_text(path, "--train-data file")  # not UTF-8 or binary: one line naming the byte offset
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                      if x.strip()]
        return [InstructExample(f"{path.stem}:{i}", r["query"], "", r["response"], None) for i, r in enumerate(rows)]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a MetaMathQA file (JSON rows with query and response): {e}.") from None


# ---------------------------------------------------------------------------------------------- the tasks
def _task(name: str, description: str, sets: dict[str, EvalSpec], train: Reader | None, template: str = "alpaca",
          takes_train_data: bool = False, train_filter: str = "text") -> InstructTask:
    return InstructTask(name=name, description=description, num_labels=0, metrics=("exact_match",),
                        main_metric="exact_match", eval_splits=tuple(sets), splits=("train", *sets), train=train,
                        sets=sets, default_template=template, takes_train_data=takes_train_data,
                        train_filter=train_filter)


def _suite(suite: str) -> dict[str, EvalSpec]:
    from .instruct import SUITES, llm_adapters_dir

    out = {}
    for name, s in SUITES[suite].items():
        if getattr(s, "optional", False) and not (llm_adapters_dir() / s.path).is_file():
            continue  # e.g. HellaSwag: in the suite when its file is present
        out[name] = EvalSpec(_adapters(s.path), s.filter, s.max_new_tokens, extra=s.extra)
    return out


def generative_tasks() -> list[InstructTask]:
    """Every registered generation task (built when the registry is, so the suites reflect the files present)."""
    from .instruct import SUITES

    tasks = [
        _task("gsm8k", "GSM8K: grade-school math by generation (exact match of the final number); train: GSM8K "
              "train (7,473), dev: GSM8K test (1,319)", {"dev": EvalSpec(_gsm8k("test.jsonl"), "gsm8k", 256)},
              _gsm8k("train.jsonl"), takes_train_data=True, train_filter="gsm8k"),
        _task("math", "Math suite: LLM-Adapters arithmetic sets by generation (average exact match); train: "
              "math_10k.json", _suite("math"), None, takes_train_data=True, train_filter="number"),
        _task("commonsense", "Commonsense: LLM-Adapters commonsense sets by generation (average accuracy); train: "
              "commonsense_170k.json", _suite("commonsense"), None, takes_train_data=True,
              train_filter="commonsense"),
    ]
    commonsense = SUITES["commonsense"]
    for name, rel in SOURCES.items():  # the per-task training splits that are here, each a task of its own
        s = commonsense[name]
        tasks.append(_task(name, f"{TITLES[name]}: LLM-Adapters commonsense task by generation (accuracy); "
                           "train and test from LLM-Adapters", {"dev": EvalSpec(_adapters(s.path), s.filter, s.max_new_tokens)},
                           _adapters(rel), train_filter=s.filter))
    for name in ("reverse", "repeat"):
        tasks.append(_task(f"synthetic-{name}", f"Syn {name}: {name} 2-4 words (exact match); learnable by a "
                           "tiny random LLaMA / GPT-2 in CPU minutes", {"dev": EvalSpec(_synthetic(name, 200, 1), "text", 12)},
                           _synthetic(name, 2000, 0), template="plain"))
    return tasks


ANSWER_TOKENS = {"number": 256, "choice": 32, "text": 64}  # --answer -> max_new_tokens (math / commonsense / text)


def custom_instruct_task(name: str, spec: dict[str, Any]) -> InstructTask:
    """The user's instruction data (``--kind generation --train-file --eval-file --answer``)."""
    from .instruct import read_instruct_file

    answer = spec.get("answer", "text")
    if answer not in ANSWER_FILTERS:
        raise ConfigError(f"--answer {answer!r} is not known; accepted: {', '.join(ANSWER_FILTERS)}.")
    filt, tokens = ANSWER_FILTERS[answer], ANSWER_TOKENS[answer]

    def reader(key: str) -> Reader:
        def read(data: DataOptions) -> tuple[list, str]:
            return read_instruct_file(Path(spec[key]), answer), str(spec[key])

        return read

    if not spec.get("train") or not spec.get("dev"):
        raise ConfigError("--kind generation needs --train-file and --eval-file (JSON or JSONL rows with "
                          "instruction, optional input, output, optional answer).")
    sets = {"dev": EvalSpec(reader("dev"), filt, tokens)}
    return _task(name, f"your instruction data ({answer} answers)", sets, reader("train"), train_filter=filt)
