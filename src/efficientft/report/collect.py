"""Store records → a table's rows: one row per configuration (everything but the seed), one cell per task.

A *row* is a configuration: model, method, targets, λ / per-role ratios, method arguments (rank, ...), learning rate
and any other setting that differs between runs of the same task. A *cell* holds the runs of one row on one task,
one per replicate (seed, data seed), and their summary. Settings that are the same within every task but differ
between tasks (e.g. epochs per task, as in most papers) are a task's protocol, not a row: they are listed once.

Only ``done`` runs enter cells; every other run is counted and listed with its status and error, so nothing
disappears silently. Which split is reported is a choice (``dev``, ``selection``, or the labelled ``best_dev``
convention); with ``select_lr`` the learning rate of each cell is chosen by :func:`select_lr`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ENVIRONMENT_FIELDS
from ..errors import ConfigError, did_you_mean
from ..store import Store
from .stats import Summary, summarize

SPLITS = ("dev", "selection", "best_dev")
SPLIT_TITLES = {"dev": "dev split", "selection": "selection split (carved from train)",
                "best_dev": 'best dev score over evaluation points (the "best dev score" convention; optimistic)'}
# Fields that vary between the replicates of one cell (aggregated over, and used to pair runs).
REPLICATE_FIELDS = ("seed", "data_seed")
# Fields that define a row's identity in a paper table, shown as their own columns.
ROW_FIELDS = ("model", "method", "targets", "lr_ratio", "role_lr", "method_args", "lr")
COST_FIELDS = ("trainable_params", "base_params", "trainable_fraction", "peak_memory_mb", "wall_s", "train_s",
               "median_step_s", "tokens_per_s")
_SKIP = set(ENVIRONMENT_FIELDS) | set(REPLICATE_FIELDS) | {"task", "custom"}


def _freeze(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


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

    def cost(self, name: str) -> float:
        vals = [_num((r.get("cost") or {}).get(name)) for r in self.runs]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    def seed_scores(self) -> dict[int, float]:
        """Scores by seed value (the pairing key of comparisons, when data seeds do not vary)."""
        return {rep[0] if len({r[1] for r in self.scores}) == 1 else rep: v for rep, v in self.scores.items()}


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
    select_lr: bool = False
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its own fixed arguments


def task_title(task: str) -> str:
    """A task's display name: "RTE", "SST-2", "STS-B" from the registry's description, else the name."""
    from ..tasks import TASKS

    if task in TASKS:
        head = TASKS.get(task).description.split(":")[0].strip()
        if head and len(head) <= 12:
            return head
    return task


def _flat(cfg: dict) -> dict[str, Any]:
    """A run's identity as one flat mapping: method arguments inline, replicate and environment fields out."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k in _SKIP:
            continue
        if k == "method_args":
            out.update({str(a): b for a, b in (v or {}).items()})
        elif k == "role_lr":
            out[k] = ",".join(f"{r}={float(x):g}" for r, x in sorted((v or {}).items())) or None
        else:
            out[k] = v
    return out


def _metric(rec: dict, task: str, overrides: dict[str, str]) -> str:
    if task in overrides:
        return overrides[task]
    mm = rec.get("main_metric") or ""
    if "/" in mm:
        return mm.split("/", 1)[1]
    from ..tasks import get_task

    return get_task(task).main_metric


def _matches_tags(rec: dict, tags: dict[str, str]) -> bool:
    have = rec.get("tags") or {}
    return all(str(have.get(k)) == v for k, v in tags.items())


def select_lr(by_lr: dict[float, list[dict]], metric: str) -> tuple[float, str, dict[float, float]]:
    """The learning rate of a cell: the best mean ``selection/<metric>`` over its seeds.

    When some learning rate has no selection score, falls back to ``dev/<metric>`` and says so
    ("dev (optimistic)": choosing on the reported split flatters every method). Returns (lr, basis, means).
    Kept small and alone so that the sweep's own selection can replace it.
    """

    def mean_of(recs: list[dict], split: str) -> float:
        vals = [_num((r.get("scores") or {}).get(f"{split}/{metric}")) for r in recs]
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else math.nan

    for split, basis in (("selection", "selection"), ("dev", "dev (optimistic)")):
        means = {lr: mean_of(recs, split) for lr, recs in by_lr.items()}
        if all(math.isfinite(m) for m in means.values()):
            best = max(sorted(means), key=lambda lr: means[lr])
            return best, basis, means
    return sorted(by_lr)[0], "none (no scores)", {}


def row_label(fields: dict[str, Any], shown: Sequence[str]) -> str:
    """A row's name: method and targets, then the shown settings that apply to it (``lora qv r=8 λ=4``)."""
    parts = [str(fields.get("method")), str(fields.get("targets"))]
    for k in shown:
        v = fields.get(k)
        if k in ("method", "targets") or v is None:
            continue
        if k == "lr_ratio":
            parts.append(f"λ={_num(v):g}")
        elif k == "rank":
            parts.append(f"r={v}")
        elif isinstance(v, float):
            parts.append(f"{k}={v:g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def _sort_key(fields: dict[str, Any]) -> tuple:
    def k(v: Any) -> tuple:
        n = _num(v)
        return (0, n, "") if math.isfinite(n) else (1, 0.0, str(v))

    return (str(fields.get("model")), str(fields.get("method")), k(fields.get("rank")), str(fields.get("targets")),
            k(fields.get("lr_ratio")), str(fields.get("role_lr")), k(fields.get("lr")),
            _freeze({a: b for a, b in fields.items() if a not in ROW_FIELDS}))


def collect(store: Store, split: str = "dev", tasks: Iterable[str] | None = None,
            methods: Iterable[str] | None = None, tags: dict[str, str] | None = None,
            metrics: dict[str, str] | None = None, choose_lr: bool = False) -> Collection:
    """Read ``store`` and group its runs into rows and cells (see the module docstring)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}.{did_you_mean(split, SPLITS)} Accepted: {', '.join(SPLITS)}.")
    records = store.runs()
    if not records:
        raise ConfigError(f"the results store {store.path} has no runs; run something first (eft run / eft sweep).")
    task_list = [t.strip() for t in tasks] if tasks else None
    method_list = [m.strip() for m in methods] if methods else None
    known_tasks = sorted({r["config"].get("task") for r in records})
    known_methods = sorted({r["config"].get("method") for r in records})
    for name, asked, known in (("task", task_list, known_tasks), ("method", method_list, known_methods)):
        for a in asked or []:
            if a not in known:
                raise ConfigError(f"no runs of {name} {a!r} in {store.path}.{did_you_mean(a, known)} "
                                  f"The store has {name}s: {', '.join(map(str, known))}.")
    records = [r for r in records
               if (task_list is None or r["config"].get("task") in task_list)
               and (method_list is None or r["config"].get("method") in method_list)
               and _matches_tags(r, tags or {})]
    not_done = [r for r in records if r["status"] != "done"]
    done = [r for r in records if r["status"] == "done"]
    if not done:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(_count(r["status"] for r in records).items())) or "none"
        raise ConfigError(f"no finished (done) runs to report in {store.path} with these filters (runs: {counts}).")

    overrides = dict(metrics or {})
    for task, m in overrides.items():
        have = sorted({k.split("/", 1)[1] for r in done if r["config"].get("task") == task
                       for k in (r.get("scores") or {}) if k.startswith(f"{split}/")})
        if not have:
            raise ConfigError(f"--metric {task}={m}: no done run of task {task!r} has {split} scores.")
        if m not in have:
            raise ConfigError(f"--metric {task}={m}: task {task!r} has no {split}/{m} score."
                              f"{did_you_mean(m, have)} It has: {', '.join(have)}.")
    scored, unscored, metric_of = [], [], {}
    for r in done:
        task = r["config"]["task"]
        m = _metric(r, task, overrides)
        metric_of.setdefault(task, m)
        value = _num((r.get("scores") or {}).get(f"{split}/{metric_of[task]}"))
        (scored if math.isfinite(value) else unscored).append(r)
    if not scored:
        raise ConfigError(f"no done run has a {split}/<metric> score (e.g. {split}/{next(iter(metric_of.values()))})"
                          f"; {'pass --selection-size when running, or ' if split == 'selection' else ''}"
                          f"choose another --split ({', '.join(SPLITS)}).")
    task_order = task_list or sorted({r["config"]["task"] for r in scored}, key=_task_rank)
    task_order = [t for t in task_order if any(r["config"]["task"] == t for r in scored)]

    flats = {r["run_key"]: _flat(r["config"]) for r in scored}
    names = sorted({k for f in flats.values() for k in f})
    # settings fixed within every task but not across tasks: the tasks' protocol, not a row property
    per_task: dict[str, dict[str, Any]] = {}
    common: dict[str, Any] = {}
    method_settings: dict[str, dict[str, Any]] = defaultdict(dict)
    row_names: list[str] = []
    for k in names:
        if choose_lr and k == "lr":
            continue
        by_task: dict[str, set] = defaultdict(set)
        for r in scored:
            value = flats[r["run_key"]].get(k)
            if value is not None:  # None: the setting does not apply (a method without this argument)
                by_task[r["config"]["task"]].add(_freeze(value))
        values = set().union(*by_task.values())
        if k == "rank" and values:  # the rank is a column of every PEFT table
            row_names.append(k)
        elif len(values) <= 1:
            value = json.loads(next(iter(values))) if values else None
            having = {str(r["config"]["method"]) for r in scored if flats[r["run_key"]].get(k) is not None}
            if value is not None and any(flats[r["run_key"]].get(k) is None for r in scored):
                for method in having:  # only some methods have this argument: theirs, not every run's setting
                    method_settings[method][k] = value
            else:
                common[k] = value
        elif all(len(v) == 1 for v in by_task.values()) and k not in ("method", "targets", "lr_ratio", "role_lr",
                                                                        "model"):
            per_task[k] = {t: json.loads(next(iter(v))) for t, v in sorted(by_task.items())}
        else:
            row_names.append(k)

    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    row_fields: dict[str, dict[str, Any]] = {}
    for r in scored:
        f = flats[r["run_key"]]
        ident = {k: f.get(k) for k in names if k not in per_task and not (choose_lr and k == "lr")}
        rk = _freeze(ident)
        row_fields[rk] = ident
        groups[rk][r["config"]["task"]].append(r)

    order = ["model", "method", "targets", "rank", "lr_ratio", "role_lr", "lr"]
    shown = [k for k in order if k in row_names or k in ("method", "targets", "lr_ratio")]
    shown += [k for k in row_names if k not in order]
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
                         if r["config"]["task"] == t) for t in task_order}
    return Collection(str(store.path), split, task_order, {t: metric_of[t] for t in task_order}, rows, shown,
                      common, per_task, not_done, unscored, comparable, choose_lr,
                      {m: dict(sorted(v.items())) for m, v in sorted(method_settings.items())})


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


def _cell(task: str, recs: list[dict], split: str, metric: str, select: bool) -> Cell:
    basis, candidates, lr = "", {}, None
    if select:
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for r in recs:
            by_lr[_num(r["config"].get("lr"))].append(r)
        lr, basis, candidates = select_lr(by_lr, metric)
        recs = by_lr[lr]
    else:
        lrs = {_num(r["config"].get("lr")) for r in recs}
        lr = lrs.pop() if len(lrs) == 1 else None
    # one run per replicate; a store keeps one record per key, so duplicates differ only outside the identity
    by_rep: dict[tuple, dict] = {}
    for r in sorted(recs, key=lambda r: r.get("finished_at") or ""):
        by_rep[(r["config"].get("seed"), r["config"].get("data_seed"))] = r
    scores = {rep: float(r["scores"][f"{split}/{metric}"]) for rep, r in sorted(by_rep.items(), key=lambda x: str(x))}
    return Cell(task, list(by_rep.values()), scores, summarize(list(scores.values())), lr, basis, candidates)


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
        fa, fb = _num(a), _num(b)
        return (fa == fb) if math.isfinite(fa) and math.isfinite(fb) else str(a) == b

    hits = [r for r in rows if all(k in r.fields and same(r.fields[k], v) for k, v in want.items())]
    if len(hits) != 1:
        what = "no row" if not hits else f"{len(hits)} rows ({'; '.join(r.label for r in hits)})"
        raise ConfigError(f"--compare {spec!r} matches {what}; it must match exactly one. "
                          f"Rows: {'; '.join(r.label for r in rows)}.")
    return hits[0]
