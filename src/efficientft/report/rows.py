"""Store records → a table's rows: which column a run belongs to (the data it read), which replicate it is, which
row (the settings that tell configurations apart), how a row is named and where it sorts.

A *row* is a configuration: model, method, targets, λ / per-role ratios, method arguments (rank, ...), learning rate
and any other setting that differs between runs of the same task. Settings that are the same within every task but
differ between tasks (e.g. epochs per task, as in most papers) are a task's protocol, not a row: they are listed once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..config import ENVIRONMENT_FIELDS, KEY_WHEN_SET, keyed_as_default
from ..vocab import DATA_LABEL_HASH as LABEL_HASH  # the label resolve gives user data
from .values import number, order_key

# Fields that vary between the replicates of one cell (aggregated over, and used to pair runs).
REPLICATE_FIELDS = ("seed", "data_seed")
# Fields that define a row's identity in a paper table, shown as their own columns.
ROW_FIELDS = ("model", "method", "targets", "lr_ratio", "role_lr", "method_args", "lr")
_NEVER_PER_TASK = ("model", "method", "targets", "lr_ratio", "role_lr")  # a row's identity, even when per task
_SKIP = set(ENVIRONMENT_FIELDS) | set(REPLICATE_FIELDS) | {"task", "custom"}


def freeze(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


_NULL = "null"  # a setting's frozen value where a run does not have it
# Keys of a custom data spec that name where files are; when the spec carries the files' hashes, what was read is
# what the hashes say, wherever the files were.
_FILE_KEYS = frozenset({"train", "dev", "test", "eval", "files", "path", "paths", "dir"})


def task_key(cfg: dict) -> str:
    """The identity of the data a run read: its task name, and for user data a digest of the data spec.

    ``custom`` (the user's files, columns, label type and, where recorded, file hashes) decides what a run read;
    two runs of task ``mine`` on different files must not share a cell. With hashes in the spec, file paths are
    left out of the digest (the same files copied elsewhere are the same data); without them, paths stand in.
    A GLUE task (no ``custom``) keeps its plain name, so existing tables keep their columns. A run resolved with
    file hashes is already named by its data (``name@hash8``, by the same rule): that name is the key, not a second
    digest appended to it (``name@h@h``); any other run's digest replaces a ``@hash8`` its name may carry.
    """
    task = str(cfg.get("task"))
    spec = cfg.get("custom")
    if spec in (None, {}, ""):
        return task
    if isinstance(spec, dict) and any("hash" in str(k) or "sha" in str(k) for k in spec):
        if LABEL_HASH.search(task):
            return task
        spec = {k: v for k, v in spec.items() if k not in _FILE_KEYS}
    return f"{LABEL_HASH.sub('', task)}@{hashlib.sha256(freeze(spec).encode()).hexdigest()[:8]}"


def _canon(v: Any) -> Any:
    """A replicate field's value with one spelling per number (``0``, ``0.0`` and ``"0"`` are one seed)."""
    f = number(v)
    if math.isnan(f):
        return v
    return int(f) if f.is_integer() else f


def replicate(cfg: dict) -> tuple:
    """Which replicate a run is: (seed, data seed), canonical."""
    return tuple(_canon(cfg.get(k)) for k in REPLICATE_FIELDS)



def task_title(task: str) -> str:
    """A task's display name: "RTE", "SST-2", "STS-B" from the registry's description, else the name."""
    from ..tasks import TASKS

    if task in TASKS:
        head = TASKS.get(task).description.split(":")[0].strip()
        if head and len(head) <= 12:
            return head
    return task


TUNED = "tuned"  # a row's value for a setting its search chose per task (each cell's value is in its runs)
_SHORT = {"lr_ratio": "λ", "rank": "r"}  # how a row's label names these settings


def flat_config(cfg: dict) -> dict[str, Any]:
    """A run's identity as one flat mapping: method arguments inline, replicate and environment fields out, and an
    option added after runs were stored left out at its default, as the run key leaves it (older records lack it:
    the same experiment, not another row)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in _SKIP or (k in KEY_WHEN_SET and keyed_as_default(k, v)):
            continue
        if k == "method_args":
            out.update({str(a): b for a, b in (v or {}).items()})
        elif k == "role_lr":
            out[k] = ",".join(f"{r}={number(x):g}" for r, x in sorted((v or {}).items())) or None
        else:
            out[k] = v
    return out



def row_label(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A row's name: method and targets, then the shown settings that apply to it (``lora qv r=8 λ=4``)."""
    parts = [str(fields.get("method")), str(fields.get("targets"))]
    for k in shown:
        v = fields.get(k)
        if k in ("method", "targets") or v is None:
            continue
        if v == TUNED:
            parts.append(f"{_SHORT.get(k, k)}={TUNED}")
        elif k == "lr_ratio":
            parts.append(f"λ={number(v):g}")
        elif k == "rank":
            parts.append(f"r={v}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def row_sort_key(fields: dict[str, Any]) -> tuple:
    k = order_key
    return (str(fields.get("model")), str(fields.get("method")), k(fields.get("rank")), str(fields.get("targets")),
            k(fields.get("lr_ratio")), str(fields.get("role_lr")), k(fields.get("lr")),
            freeze({a: b for a, b in fields.items() if a not in ROW_FIELDS}))


def shown_fields(row_names: list[str]) -> list[str]:
    """The label columns: method, targets and λ always, then the row fields in the order of PEFT tables."""
    order = ["model", "method", "targets", "rank", "lr_ratio", "role_lr", "lr"]
    return [k for k in order if k in row_names or k in ("method", "targets", "lr_ratio")] + \
        [k for k in row_names if k not in order]


def telling_fields(idents: list[dict[str, Any]], row_names: list[str]) -> list[str]:
    """Fields that tell apart rows whose labels would otherwise be equal (a setting one task's runs have and
    another's lack splits a method's runs into two rows): every row is named by what makes it a row."""
    shown = shown_fields(row_names)
    same: dict[str, list[dict]] = defaultdict(list)
    for f in idents:
        same[row_label(f, shown)].append(f)
    return sorted({k for group in same.values() if len(group) > 1 for k in {k for f in group for k in f}
                   if len({freeze(f.get(k)) for f in group}) > 1})


def split_settings(scored: list[dict], flats: dict[str, dict], names: list[str], tid: dict[str, str],
              choose_lr: bool) -> tuple[dict, dict, dict, list[str]]:
    """File each setting as shared, a method's own, a task's protocol (fixed within each task, not across), or a
    row column. The test is per (task, method) with "no value" counted as a value: runs of one method on one task
    that differ in a setting (128 against an older record without it) must land in different rows, never in one
    cell; a setting only some methods have is theirs, not every run's."""
    per_task: dict[str, dict[str, Any]] = {}
    common: dict[str, Any] = {}
    method_settings: dict[str, dict[str, Any]] = defaultdict(dict)
    row_names: list[str] = []
    for k in names:
        if choose_lr and k == "lr":
            continue
        by_tm: dict[tuple, set] = defaultdict(set)
        for r in scored:
            by_tm[(tid[r["run_key"]], str(r["config"].get("method")))].add(freeze(flats[r["run_key"]].get(k)))
        values = set().union(*by_tm.values()) - {_NULL}
        mixed = any(len(v) > 1 for v in by_tm.values())
        # the values per task, and per method whether it is set: where a setting is set and where not follows
        # whole methods (a method's own argument) or whole tasks (a task's protocol, e.g. a subsample of SST-2 only)
        by_task: dict[str, set] = defaultdict(set)
        set_by_method: dict[str, set] = defaultdict(set)
        for (t, m), v in by_tm.items():
            by_task[t] |= v - {_NULL}
            set_by_method[m].add(v != {_NULL})
        partial = any(v == {_NULL} for v in by_tm.values())
        by_method = all(len(x) == 1 for x in set_by_method.values())
        # a run setting every record holds (max_train: None is "no subsample") may be a task's protocol even where
        # some tasks leave it unset; a method argument missing from some records is unknown there, so it splits
        recorded = all(k in r["config"] for r in scored)
        per_task_ok = not mixed and all(len(v) <= 1 for v in by_task.values()) and k not in _NEVER_PER_TASK and \
            (recorded or not partial)
        if k == "rank" and values:  # the rank is a column of every PEFT table
            row_names.append(k)
        elif not mixed and len(values) <= 1 and (not partial or by_method or not per_task_ok):
            value = json.loads(next(iter(values))) if values else None
            having = {m for (_t, m), v in by_tm.items() if v != {_NULL}}
            if value is not None and partial:
                for method in having:  # only some methods have this argument: theirs, not every run's setting
                    method_settings[method][k] = value
            else:
                common[k] = value
        elif per_task_ok:
            per_task[k] = {t: json.loads(next(iter(v))) if v else None for t, v in sorted(by_task.items())}
        else:
            row_names.append(k)
    return per_task, common, method_settings, row_names


def suite_order(groups: dict[str, dict[str, list[dict]]]) -> dict[str, int] | None:
    """Each row's position in its suite (the smallest ``entry`` tag of its runs) when every run comes from one
    suite; None otherwise (rows then keep the sort by model, method, rank, targets, λ, lr)."""
    suites, entry = set(), {}
    for rk, by_task in groups.items():
        positions = []
        for recs in by_task.values():
            for r in recs:
                tags = r.get("tags") or {}
                suites.add(tags.get("suite"))
                positions.append(tags.get("entry"))
        if any(not isinstance(p, int) or isinstance(p, bool) for p in positions):
            return None
        entry[rk] = min(positions)
    return entry if len(suites) == 1 and None not in suites else None


_GLUE_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def task_rank(task: str) -> tuple:
    """GLUE's usual column order (as in the GLUE paper and most PEFT tables), then other tasks by name."""
    base = task.split("-")[0]
    return (_GLUE_ORDER.index(base) if base in _GLUE_ORDER else len(_GLUE_ORDER), task)


