"""Store records → a table's rows: one row per configuration (everything but the seed), one cell per task.

A *row* is a configuration: model, method, targets, λ / per-role ratios, method arguments (rank, ...), learning rate
and any other setting that differs between runs of the same task. A *cell* holds the runs of one row on one task,
one per replicate (seed, data seed), and their summary. Settings that are the same within every task but differ
between tasks (e.g. epochs per task, as in most papers) are a task's protocol, not a row: they are listed once.

A cell's column is the *data* its runs read (:func:`task_key`: the task, plus the user's data spec and file hashes
for custom data), so two data sets that share a name never share a cell. A setting that differs between runs of
one method on one task (a value against no value included) always splits rows.

Only ``done`` runs enter cells; every other run is counted and listed with its status and error, and a replicate
run twice counts once (the later run; the earlier is listed as superseded), so nothing disappears silently.
Which split is reported is a choice (``dev``, ``selection``, or the labelled ``best_dev`` convention); with
``select_lr`` the learning rate of each cell is chosen by :func:`select_lr`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ENVIRONMENT_FIELDS, KEY_WHEN_SET, LABEL_HASH  # LABEL_HASH: resolve's data label
from ..errors import ConfigError, did_you_mean
from ..store import Store
from .stats import Summary, summarize
from .values import number, order_key

SPLITS = ("dev", "selection", "best_dev")
SPLIT_TITLES = {"dev": "dev split", "selection": "selection split (carved from train)",
                "best_dev": 'best dev score over evaluation points (the "best dev score" convention; optimistic)'}
# Fields that vary between the replicates of one cell (aggregated over, and used to pair runs).
REPLICATE_FIELDS = ("seed", "data_seed")
# Fields that define a row's identity in a paper table, shown as their own columns.
ROW_FIELDS = ("model", "method", "targets", "lr_ratio", "role_lr", "method_args", "lr")
COST_FIELDS = ("trainable_params", "base_params", "trainable_fraction", "peak_memory_mb", "wall_s", "train_s",
               "median_step_s", "tokens_per_s", "mfu")
_NEVER_PER_TASK = ("model", "method", "targets", "lr_ratio", "role_lr")  # a row's identity, even when per task
_SKIP = set(ENVIRONMENT_FIELDS) | set(REPLICATE_FIELDS) | {"task", "custom"}


def _freeze(v: Any) -> str:
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
    return f"{LABEL_HASH.sub('', task)}@{hashlib.sha256(_freeze(spec).encode()).hexdigest()[:8]}"


def _canon(v: Any) -> Any:
    """A replicate field's value with one spelling per number (``0``, ``0.0`` and ``"0"`` are one seed)."""
    f = number(v)
    if math.isnan(f):
        return v
    return int(f) if f.is_integer() else f


def replicate(cfg: dict) -> tuple:
    """Which replicate a run is: (seed, data seed), canonical."""
    return tuple(_canon(cfg.get(k)) for k in REPLICATE_FIELDS)


@dataclass
class Cell:
    """The runs of one configuration on one task (one per replicate) and the summary of their scores."""

    task: str
    runs: list[dict]
    scores: dict[tuple, float]  # replicate (seed, data_seed) -> raw score (not ×100)
    summary: Summary
    lr: float | None = None  # the learning rate these runs used (the selected one under select_lr)
    basis: str = ""  # how lr was selected: "" (not selected), "selection", "dev (optimistic)"
    candidates: dict[float, float] = field(default_factory=dict)  # lr -> mean selection score, under select_lr
    superseded: list[dict] = field(default_factory=list)  # earlier runs of a replicate this cell has again

    def cost(self, name: str) -> float:
        vals = [number((r.get("cost") or {}).get(name)) for r in self.runs]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan


@dataclass
class Row:
    """One configuration: its settings and a cell per task."""

    fields: dict[str, Any]  # flat: model, method, targets, lr_ratio, role_lr, rank, lr, other method args, ...
    label: str
    cells: dict[str, Cell] = field(default_factory=dict)

    def cost(self, name: str, tasks: Sequence[str]) -> float:
        vals = [self.cells[t].cost(name) for t in tasks if t in self.cells]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan


@dataclass
class Collection:
    """Everything a report shows: rows, tasks with their metric, and what was left out and why."""

    store: str
    split: str
    tasks: list[str]
    metrics: dict[str, str]  # task -> metric name (the score key is f"{split}/{metric}")
    rows: list[Row]
    label_fields: list[str]  # row fields that differ between rows (shown as columns)
    common: dict[str, Any]  # settings shared by every run
    per_task: dict[str, dict[str, Any]]  # setting -> {task: value}, for settings fixed within each task
    not_done: list[dict]  # records whose status is not done
    unscored: list[dict]  # done records without a score for the chosen split and metric
    comparable: dict[str, bool]  # task -> evaluated on its official split
    select_lr: bool | str = False  # False, or the split the learning rate was chosen on
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its own fixed arguments
    superseded: list[dict] = field(default_factory=list)  # done runs replaced in their cell by a later run


def task_title(task: str) -> str:
    """A task's display name: "RTE", "SST-2", "STS-B" from the registry's description, else the name."""
    from ..tasks import TASKS

    if task in TASKS:
        head = TASKS.get(task).description.split(":")[0].strip()
        if head and len(head) <= 12:
            return head
    return task


def _flat(cfg: dict) -> dict[str, Any]:
    """A run's identity as one flat mapping: method arguments inline, replicate and environment fields out, and an
    option added after runs were stored left out at its default, as the run key leaves it (older records lack it:
    the same experiment, not another row)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in _SKIP or (k in KEY_WHEN_SET and v == KEY_WHEN_SET[k]):
            continue
        if k == "method_args":
            out.update({str(a): b for a, b in (v or {}).items()})
        elif k == "role_lr":
            out[k] = ",".join(f"{r}={number(x):g}" for r, x in sorted((v or {}).items())) or None
        else:
            out[k] = v
    return out


def _metric(rec: dict, key: str, overrides: dict[str, str]) -> str:
    task = rec["config"].get("task")
    if key in overrides or task in overrides:
        return overrides.get(key, overrides.get(task))
    mm = rec.get("main_metric") or ""
    if isinstance(mm, str) and "/" in mm:
        return mm.split("/", 1)[1]
    from ..tasks import get_task

    return get_task(task).main_metric


def _matches_tags(rec: dict, tags: dict[str, str]) -> bool:
    have = rec.get("tags") or {}
    return all(str(have.get(k)) == v for k, v in tags.items())


def select_lr(by_lr: dict[float, list[dict]], metric: str,
              on: str = "selection") -> tuple[float, str, dict[float, float]]:
    """The learning rate of a cell: the best mean ``selection/<metric>`` over its seeds.

    When some learning rate has no selection score, falls back to ``dev/<metric>`` and says so
    ("dev (optimistic)": choosing on the reported split flatters every method). ``on="best_dev"`` (or ``"dev"``)
    chooses on that split instead: the "best dev score" convention of most papers, labelled optimistic.
    Returns (lr, basis, means). Kept small and alone so that the sweep's own selection can replace it.
    """

    def mean_of(recs: list[dict], split: str) -> float:
        vals = [number((r.get("scores") or {}).get(f"{split}/{metric}")) for r in recs]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    order = (("selection", "selection"), ("dev", "dev (optimistic)")) if on == "selection" else \
        ((on, f"{on} (optimistic)"),)
    for split, basis in order:
        means = {lr: mean_of(recs, split) for lr, recs in by_lr.items()}
        if all(math.isfinite(m) for m in means.values()):
            best = max(sorted(means, key=order_key), key=lambda lr: means[lr])
            return best, basis, means
    return sorted(by_lr, key=order_key)[0], "none (no scores)", {}


def row_label(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A row's name: method and targets, then the shown settings that apply to it (``lora qv r=8 λ=4``)."""
    parts = [str(fields.get("method")), str(fields.get("targets"))]
    for k in shown:
        v = fields.get(k)
        if k in ("method", "targets") or v is None:
            continue
        if k == "lr_ratio":
            parts.append(f"λ={number(v):g}")
        elif k == "rank":
            parts.append(f"r={v}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def _sort_key(fields: dict[str, Any]) -> tuple:
    k = order_key
    return (str(fields.get("model")), str(fields.get("method")), k(fields.get("rank")), str(fields.get("targets")),
            k(fields.get("lr_ratio")), str(fields.get("role_lr")), k(fields.get("lr")),
            _freeze({a: b for a, b in fields.items() if a not in ROW_FIELDS}))


def collect(store: Store, split: str = "dev", tasks: Iterable[str] | None = None,
            methods: Iterable[str] | None = None, tags: dict[str, str] | None = None,
            metrics: dict[str, str] | None = None, choose_lr: bool | str = False) -> Collection:
    """Read ``store`` and group its runs into rows and cells (see the module docstring). ``choose_lr``: False, or
    the split the learning rate is chosen on (True: ``selection``; ``best_dev`` is the optimistic convention)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}.{did_you_mean(split, SPLITS)} Accepted: {', '.join(SPLITS)}.")
    choose_lr = "selection" if choose_lr is True else choose_lr
    if choose_lr and choose_lr not in SPLITS:
        raise ConfigError(f"unknown split to choose the learning rate on: {choose_lr!r}. Accepted: "
                          f"{', '.join(SPLITS)}.")
    records = store.runs()
    if not records:
        raise ConfigError(f"the results store {store.path} has no runs; run something first (eft run / eft sweep).")
    tid = {r["run_key"]: task_key(r["config"]) for r in records}  # the data each run read: its column
    task_list = [t.strip() for t in tasks] if tasks else None
    method_list = [m.strip() for m in methods] if methods else None
    names = {k: {t, LABEL_HASH.sub("", t)} for k, t in tid.items()}  # "mine" selects every mine@hash8
    known_tasks = sorted({str(r["config"].get("task")) for r in records} | set().union(*names.values()))
    known_methods = sorted({str(r["config"].get("method")) for r in records})
    for name, asked, known in (("task", task_list, known_tasks), ("method", method_list, known_methods)):
        for a in asked or []:
            if a not in known:
                raise ConfigError(f"no runs of {name} {a!r} in {store.path}.{did_you_mean(a, known)} "
                                  f"The store has {name}s: {', '.join(map(str, known))}.")
    records = [r for r in records
               if (task_list is None or r["config"].get("task") in task_list or names[r["run_key"]] & set(task_list))
               and (method_list is None or r["config"].get("method") in method_list)
               and _matches_tags(r, tags or {})]
    not_done = [r for r in records if r["status"] != "done"]
    done = [r for r in records if r["status"] == "done"]
    if not done:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(_count(r["status"] for r in records).items())) or "none"
        raise ConfigError(f"no finished (done) runs to report in {store.path} with these filters (runs: {counts}).")

    overrides = dict(metrics or {})
    for task, m in overrides.items():
        have = sorted({k.split("/", 1)[1] for r in done if task in (r["config"].get("task"), tid[r["run_key"]])
                       for k in (r.get("scores") or {}) if k.startswith(f"{split}/")})
        if not have:
            raise ConfigError(f"--metric {task}={m}: no done run of task {task!r} has {split} scores.")
        if m not in have:
            raise ConfigError(f"--metric {task}={m}: task {task!r} has no {split}/{m} score."
                              f"{did_you_mean(m, have)} It has: {', '.join(have)}.")
    scored, unscored, metric_of = [], [], {}
    for r in done:
        task = tid[r["run_key"]]
        metric_of.setdefault(task, _metric(r, task, overrides))
        value = number((r.get("scores") or {}).get(f"{split}/{metric_of[task]}"))
        (scored if math.isfinite(value) else unscored).append(r)
    if not scored:
        raise ConfigError(f"no done run has a {split}/<metric> score (e.g. {split}/{next(iter(metric_of.values()))})"
                          f"; {'pass --selection-size when running, or ' if split == 'selection' else ''}"
                          f"choose another --split ({', '.join(SPLITS)}).")
    name_of = {tid[r["run_key"]]: r["config"].get("task") for r in scored}  # column -> its task's name
    task_order = sorted(name_of, key=_task_rank)
    if task_list:  # in the order asked; a name stands for every data set of that name
        task_order = list(dict.fromkeys(c for t in task_list for c in task_order
                                        if t in (c, name_of[c], LABEL_HASH.sub("", c))))

    flats = {r["run_key"]: _flat(r["config"]) for r in scored}
    names = sorted({k for f in flats.values() for k in f})
    per_task, common, method_settings, row_names = _settings(scored, flats, names, tid, choose_lr)

    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    row_fields: dict[str, dict[str, Any]] = {}
    for r in scored:
        f = flats[r["run_key"]]
        ident = {k: f.get(k) for k in names if k not in per_task and not (choose_lr and k == "lr")}
        rk = _freeze(ident)
        row_fields[rk] = ident
        groups[rk][tid[r["run_key"]]].append(r)

    row_names += [k for k in _telling(list(row_fields.values()), row_names) if k not in row_names]
    for settings in method_settings.values():  # a row column is no method's fixed setting
        for k in row_names:
            settings.pop(k, None)
    shown = _shown(row_names)
    rows = []
    for rk, by_task in groups.items():
        fields_ = row_fields[rk]
        row = Row(fields_, row_label(fields_, shown))
        for task, recs in by_task.items():
            row.cells[task] = _cell(task, recs, split, metric_of[task], choose_lr)
        rows.append(row)
    rows.sort(key=lambda r: _sort_key(r.fields))
    entry = _suite_order(groups)
    if entry is not None:  # one suite's runs: its methods in the order the suite lists them
        rows.sort(key=lambda r: entry[_freeze(r.fields)])
    comparable = {t: all((r.get("provenance") or {}).get("comparable", True) for r in scored
                         if tid[r["run_key"]] == t) for t in task_order}
    superseded = [x for row in rows for c in row.cells.values() for x in c.superseded]
    return Collection(str(store.path), split, task_order, {t: metric_of[t] for t in task_order}, rows, shown,
                      common, per_task, not_done, unscored, comparable, choose_lr,
                      {m: dict(sorted(v.items())) for m, v in sorted(method_settings.items())}, superseded)


def _shown(row_names: list[str]) -> list[str]:
    """The label columns: method, targets and λ always, then the row fields in the order of PEFT tables."""
    order = ["model", "method", "targets", "rank", "lr_ratio", "role_lr", "lr"]
    return [k for k in order if k in row_names or k in ("method", "targets", "lr_ratio")] + \
        [k for k in row_names if k not in order]


def _telling(idents: list[dict[str, Any]], row_names: list[str]) -> list[str]:
    """Fields that tell apart rows whose labels would otherwise be equal (a setting one task's runs have and
    another's lack splits a method's runs into two rows): every row is named by what makes it a row."""
    shown = _shown(row_names)
    same: dict[str, list[dict]] = defaultdict(list)
    for f in idents:
        same[row_label(f, shown)].append(f)
    return sorted({k for group in same.values() if len(group) > 1 for k in {k for f in group for k in f}
                   if len({_freeze(f.get(k)) for f in group}) > 1})


def _settings(scored: list[dict], flats: dict[str, dict], names: list[str], tid: dict[str, str],
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
            by_tm[(tid[r["run_key"]], str(r["config"].get("method")))].add(_freeze(flats[r["run_key"]].get(k)))
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


def _suite_order(groups: dict[str, dict[str, list[dict]]]) -> dict[str, int] | None:
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


def _cell(task: str, recs: list[dict], split: str, metric: str, select: bool | str) -> Cell:
    # one run per replicate (and lr, under selection): a store keeps one record per key, but runs whose keys differ
    # only outside the identity (device, data folder), or whose seed is spelled 0 and "0", repeat a replicate; the
    # later one counts, before anything (the lr choice included) reads a score
    latest: dict[tuple, dict] = {}
    superseded = []
    for r in sorted(recs, key=lambda r: str(r.get("finished_at") or "")):
        rep = (_lr(r), replicate(r["config"]))
        if rep in latest:
            superseded.append(latest[rep])
        latest[rep] = r
    recs = list(latest.values())
    basis, candidates, lr = "", {}, None
    if select:
        by_lr: dict[float | None, list[dict]] = defaultdict(list)
        for r in recs:
            by_lr[_lr(r)].append(r)
        lr, basis, candidates = select_lr(by_lr, metric, select)
        recs = by_lr[lr]
    else:
        lrs = {_lr(r) for r in recs}
        lr = lrs.pop() if len(lrs) == 1 else None
    by_rep = {replicate(r["config"]): r for r in recs}
    reps = sorted(by_rep, key=order_key)
    scores = {rep: number(by_rep[rep]["scores"][f"{split}/{metric}"]) for rep in reps}
    return Cell(task, [by_rep[rep] for rep in reps], scores, summarize(list(scores.values())), lr, basis, candidates,
                superseded)


def _lr(r: dict) -> float | None:
    f = number(r["config"].get("lr"))
    return None if math.isnan(f) else f


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return dict(out)


_GLUE_ORDER = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def _task_rank(task: str) -> tuple:
    """GLUE's usual column order (as in the GLUE paper and most PEFT tables), then other tasks by name."""
    base = task.split("-")[0]
    return (_GLUE_ORDER.index(base) if base in _GLUE_ORDER else len(_GLUE_ORDER), task)


def find_row(rows: Sequence[Row], spec: str) -> Row:
    """The one row matching ``spec``: its label, or ``key=value`` pairs (``method=lora,targets=qv,lambda=4``)."""
    for r in rows:
        if r.label == spec.strip():
            return r
    alias = {"λ": "lr_ratio", "lambda": "lr_ratio", "r": "rank"}
    want = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ConfigError(f"--compare wants a row label or key=value pairs (method=lora,targets=qv,lambda=4); "
                              f"got {spec!r}. Rows: {'; '.join(r.label for r in rows)}.")
        k, v = (s.strip() for s in part.split("=", 1))
        want[alias.get(k, k)] = v

    def same(a: Any, b: str) -> bool:
        fa, fb = number(a), number(b)
        return (fa == fb) if math.isfinite(fa) and math.isfinite(fb) else str(a) == b

    hits = [r for r in rows if all(k in r.fields and same(r.fields[k], v) for k, v in want.items())]
    if len(hits) != 1:
        what = "no row" if not hits else f"{len(hits)} rows ({'; '.join(r.label for r in hits)})"
        raise ConfigError(f"--compare {spec!r} matches {what}; it must match exactly one. "
                          f"Rows: {'; '.join(r.label for r in rows)}.")
    return hits[0]
