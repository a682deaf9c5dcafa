"""Instruction examples and their readers: GSM8K, the LLM-Adapters evaluation files, and the user's own rows.

Every generative task reads into one shape, :class:`InstructExample` (instruction, optional input, the target
response, and the gold answer its filter is scored against), so training and evaluation never learn where the data
came from. The user's files are checked as strictly as the classification data in ``tasks/custom.py``: each
defect is one :class:`ConfigError` naming the file, the row and what is wrong, before anything trains.

``SUITES`` declares LLM-Adapters' two evaluation suites as data: each set's file under the LLM-Adapters folder,
its answer filter and its generation budget (their ``evaluate.py`` generates 256 new tokens for math,
``commonsense_evaluate.py`` 32 for commonsense).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, unknown
from ..textfile import DuplicateKey, describe, jsonl_records, read_text, text_field, unique_keys
from .answers import extract, to_number

ENV_LLM_ADAPTERS_DIR = "EFT_LLM_ADAPTERS_DIR"
ENV_GSM8K_DIR = "EFT_GSM8K_DIR"
ANSWER_TYPES = ("number", "choice", "text")
# The filter that scores each answer type of the user's data: a number is read with the GSM8K rule (a marker,
# else the last number), a choice label is the first word (after an "answer is" marker), text is the whole
# normalised response.
ANSWER_FILTERS = {"number": "gsm8k", "choice": "choice", "text": "text"}
_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class InstructExample:
    """One instruction-tuning / evaluation example. ``answer`` is the gold value a filter's extraction is compared
    with (None when the task is scored on the whole response)."""

    id: str
    instruction: str
    input: str
    output: str
    answer: str | None


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set of a suite: its file relative to the LLM-Adapters folder and how it is scored."""

    name: str
    path: str
    filter: str
    max_new_tokens: int
    extra: bool = False  # evaluated, but not part of the suite's average (MathQA in LLM-Adapters' tables)
    optional: bool = False  # skipped when its file is absent (HellaSwag is not on these machines)


MATH_TOKENS, COMMONSENSE_TOKENS = 256, 32


def _sets(*sets: EvalSet) -> dict[str, EvalSet]:
    return {s.name: s for s in sets}


# suite -> eval-set name -> its file, filter and generation budget
SUITES: dict[str, dict[str, EvalSet]] = {
    "math": _sets(
        EvalSet("gsm8k", "dataset/gsm8k/test.json", "number", MATH_TOKENS),
        EvalSet("aqua", "dataset/AQuA/test.json", "letter", MATH_TOKENS),
        EvalSet("svamp", "dataset/SVAMP/test.json", "number", MATH_TOKENS),
        EvalSet("mawps", "dataset/mawps/test.json", "number", MATH_TOKENS),
        EvalSet("addsub", "dataset/AddSub/test.json", "number", MATH_TOKENS),
        EvalSet("multiarith", "dataset/MultiArith/test.json", "number", MATH_TOKENS),
        EvalSet("singleeq", "dataset/SingleEq/test.json", "number", MATH_TOKENS),
        EvalSet("mathqa", "dataset/mathqa/test.json", "letter", MATH_TOKENS, extra=True),
    ),
    "commonsense": _sets(
        EvalSet("boolq", "dataset/boolq/test.json", "commonsense-boolq", COMMONSENSE_TOKENS),
        EvalSet("piqa", "dataset/piqa/test.json", "commonsense-piqa", COMMONSENSE_TOKENS),
        EvalSet("siqa", "dataset/social_i_qa/test.json", "commonsense-siqa", COMMONSENSE_TOKENS),
        EvalSet("hellaswag", "dataset/hellaswag/test.json", "commonsense-hellaswag", COMMONSENSE_TOKENS,
                optional=True),
        EvalSet("winogrande", "dataset/winogrande/test.json", "commonsense-winogrande", COMMONSENSE_TOKENS),
        EvalSet("arc_e", "dataset/ARC-Easy/test.json", "commonsense-arc", COMMONSENSE_TOKENS),
        EvalSet("arc_c", "dataset/ARC-Challenge/test.json", "commonsense-arc", COMMONSENSE_TOKENS),
        EvalSet("obqa", "dataset/openbookqa/test.json", "commonsense-obqa", COMMONSENSE_TOKENS),
    ),
}
# The per-task training splits that are present beside the test files (usable as training sources).
TRAIN_FILES: dict[str, str] = {
    "boolq": "dataset/boolq/train.json",
    "arc_e": "dataset/ARC-Easy/train.json",
    "arc_c": "dataset/ARC-Challenge/train.json",
    "obqa": "dataset/openbookqa/train.json",
}


def _data_dir(env: str, name: str) -> Path:
    """The folder named by ``env``, else ``shared/data/<name>`` beside the project, else beside the cwd."""
    given = os.environ.get(env)
    if given:
        return Path(given).expanduser()
    project = Path(__file__).resolve().parents[3]
    candidates = [project.parent / "shared" / "data" / name, Path.cwd().parent / "shared" / "data" / name]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def llm_adapters_dir() -> Path:
    """The LLM-Adapters data folder (holding ``dataset/<Task>/test.json``): ``$EFT_LLM_ADAPTERS_DIR``, else
    ``../shared/data/llm-adapters`` beside the project or the working directory."""
    return _data_dir(ENV_LLM_ADAPTERS_DIR, "llm-adapters")


def gsm8k_dir() -> Path:
    """The GSM8K folder (``train.jsonl``, ``test.jsonl``): ``$EFT_GSM8K_DIR``, else ``../shared/data/gsm8k``."""
    return _data_dir(ENV_GSM8K_DIR, "gsm8k")


def data_file(folder: Path, relative: str, env: str) -> Path:
    """``folder / relative``, or one ConfigError naming the missing path and the variable that sets the folder."""
    path = folder / relative
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} not found; set {env} to the folder that holds {relative}.")
    return path


def suite_sets(suite: str) -> list[tuple[EvalSet, Path]]:
    """The sets of ``suite`` with their files; an optional set whose file is absent is left out."""
    if suite not in SUITES:
        raise unknown("evaluation suite", suite, SUITES)
    root = llm_adapters_dir()
    return [(s, data_file(root, s.path, ENV_LLM_ADAPTERS_DIR)) for s in SUITES[suite].values()
            if not (s.optional and not (root / s.path).is_file())]


def string_field(row: dict, key: str, where: str, *, required: bool = True, empty_ok: bool = False) -> str:
    """A string field of a row (an optional one may be missing or null); the value is checked by
    :func:`~efficientft.textfile.text_field`, as every training row's text is."""
    if key not in row or (row[key] is None and not required):
        if not required:
            return ""
        have = ", ".join(map(str, row)) or "no keys"
        raise ConfigError(f"{where}: no {key!r} field; every row needs it (this row has: {have}).")
    return text_field(row[key], key, where, empty_ok=empty_ok)


def _json_array(path: Path) -> tuple[list[Any], list[str]]:
    """(rows, locations) of a file holding one JSON array."""
    try:
        data = json.loads(read_text(path), object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise ConfigError(f"{path}: the key {describe(e.args[0])} appears more than once in one object; keys must "
                          "be unique.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json file holds one array of "
                          "objects (or one object per line).") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path} cannot be read as JSON ({str(e)[:80]}).") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path} holds {describe(data)}; a .json data file holds an array of objects.")
    return data, [f"{path}: row {i + 1}" for i in range(len(data))]


def read_rows(path: Path, fields: str = "instruction and output") -> tuple[list[Any], list[str]]:
    """(rows, locations) of a JSON array file or a JSON Lines file of objects (``fields`` names what a row holds,
    for the messages); anything else is one clear error."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ConfigError(f"{path}: unknown data format {suffix!r}; instruction data is .json (an array of "
                          "objects) or .jsonl (one object per line).")
    text = read_text(path)
    if suffix == ".json" and text.lstrip().startswith("["):
        rows, where = _json_array(path)
    else:
        _, rows, where = jsonl_records(path)
    if not rows:
        raise ConfigError(f"{path} has no examples; give at least one row with {fields}.")
    for row, w in zip(rows, where, strict=True):
        if not isinstance(row, dict):
            raise ConfigError(f"{w} is {describe(row)}, not an object with {fields}.")
    return rows, where


def _answer(row: dict, output: str, answer_type: str, where: str) -> str:
    """The gold answer of one user row under ``answer_type``; a number must be one, a missing answer is taken
    from the output (its number, or its normalised text)."""
    value = row.get("answer")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: 'answer' is {describe(value)}; it must be a string or a number.")
        value = str(value).strip()
        if not value:
            raise ConfigError(f"{where}: 'answer' is empty; drop the key to score the whole output, or give it.")
    if answer_type == "number":
        if value is None:
            value = extract("gsm8k", output)
            if value is None:
                raise ConfigError(f"{where}: no 'answer' and the output holds no number; --answer number needs a "
                                  "numeric answer per row.")
        if to_number(value) is None:
            raise ConfigError(f"{where}: 'answer' {value!r} is not a number; --answer number needs one (e.g. 42, "
                              "-3, 1,234, 2.5), or use --answer text.")
        return value
    if answer_type == "choice":
        label = value if value is not None else extract("choice", output)
        if label is None or extract("choice", label) != label:
            raise ConfigError(f"{where}: {'answer' if value is not None else 'output'} {label or output!r} is not "
                              "one word; --answer choice needs a one-word label per row (e.g. B, yes, answer2).")
        return label
    return " ".join((value if value is not None else output).split())


def read_instruct_file(path: str | os.PathLike, answer_type: str = "text") -> list[InstructExample]:
    """The user's instruction data: JSON (an array) or JSONL rows with ``instruction``, optional ``input``,
    ``output`` and optional ``answer`` (other keys are ignored). Ids are ``<file stem>:<row index>``."""
    if answer_type not in ANSWER_TYPES:
        raise unknown("answer type", answer_type, ANSWER_TYPES)
    path = Path(path)
    rows, where = read_rows(path)
    out = []
    for i, (row, w) in enumerate(zip(rows, where, strict=True)):
        instruction = string_field(row, "instruction", w)
        input_ = string_field(row, "input", w, required=False, empty_ok=True)
        output = string_field(row, "output", w)
        out.append(InstructExample(f"{path.stem}:{i}", instruction, input_, output,
                                   _answer(row, output, answer_type, w)))
    return out


def read_gsm8k(path: str | os.PathLike, calculator_annotations: bool = False) -> list[InstructExample]:
    """GSM8K JSON Lines (``question``, ``answer``): the instruction is the question, the output the worked solution
    ending with its ``#### N`` line, the answer N (commas removed). The ``<<48/2=24>>`` calculator annotations are
    removed from the solution unless ``calculator_annotations`` keeps them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"GSM8K file {str(path)!r} not found; set {ENV_GSM8K_DIR} to the folder that holds "
                          f"{path.name}.")
    _, rows, where = jsonl_records(path)
    if not rows:
        raise ConfigError(f"{path} has no examples.")
    out = []
    for i, (row, w) in enumerate(zip(rows, where, strict=True)):
        question, solution = string_field(row, "question", w), string_field(row, "answer", w)
        if "####" not in solution:
            raise ConfigError(f"{w}: the answer has no '#### N' line; a GSM8K solution ends with its final answer.")
        gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
        if to_number(gold) is None:
            raise ConfigError(f"{w}: the final answer {gold!r} after '####' is not a number.")
        if not calculator_annotations:
            solution = _CALCULATOR.sub("", solution)
        out.append(InstructExample(f"{path.parent.name}/{path.stem}:{i}", question, "", solution, gold))
    return out


def read_llm_adapters(path: str | os.PathLike) -> list[InstructExample]:
    """An LLM-Adapters file: one JSON array of ``instruction``, ``input``, ``output``, ``answer`` strings.

    ``output`` may be empty (the math test files hold model-written or no solutions; score against ``answer``).
    Ids are ``<task folder>/<file stem>:<row index>``, e.g. ``boolq/test:0``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} not found; set {ENV_LLM_ADAPTERS_DIR} to the LLM-Adapters "
                          "folder (holding dataset/<Task>/test.json).")
    rows, where = _json_array(path)
    if not rows:
        raise ConfigError(f"{path} has no examples.")
    out = []
    for i, (row, w) in enumerate(zip(rows, where, strict=True)):
        if not isinstance(row, dict):
            raise ConfigError(f"{w} is {describe(row)}, not an object.")
        out.append(InstructExample(
            f"{path.parent.name}/{path.stem}:{i}", string_field(row, "instruction", w),
            string_field(row, "input", w, required=False, empty_ok=True),
            string_field(row, "output", w, required=False, empty_ok=True), string_field(row, "answer", w).strip()))
    return out


__all__ = ["ANSWER_FILTERS", "ANSWER_TYPES", "ENV_GSM8K_DIR", "ENV_LLM_ADAPTERS_DIR", "SUITES", "TRAIN_FILES",
           "EvalSet", "InstructExample", "data_file", "gsm8k_dir", "llm_adapters_dir", "read_gsm8k",
           "read_instruct_file", "read_llm_adapters", "read_rows", "string_field", "suite_sets"]
