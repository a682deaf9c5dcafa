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

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..choice import best, mean_score
from ..errors import ConfigError, did_you_mean
from ..store import Store
from ..vocab import DATA_LABEL_HASH as LABEL_HASH  # the label resolve gives user data
from ..vocab import higher_is_better
from .learned import baseline_of, cell_learned
from .rows import (
    TUNED,
    flat_config,
    freeze,
    replicate,
    row_label,
    row_sort_key,
    shown_fields,
    split_settings,
    suite_order,
    task_key,
    task_rank,
    telling_fields,
)
from .stats import Summary, summarize
from .values import number, order_key

SPLITS = ("dev", "selection", "best_dev")
SPLIT_TITLES = {"dev": "dev split", "selection": "selection split (carved from train)",
                "best_dev": 'best dev score over evaluation points (the "best dev score" convention; optimistic)'}


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
    baseline: float = math.nan  # the trivial baseline its runs recorded for the score (mean over them; NaN: none)
    learned: bool | None = None  # its runs beat the baseline beyond their noise (:mod:`.learned`); None: no baseline

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
    searches: dict[str, str] = field(default_factory=dict)  # search name -> the score that chose its configurations
    trials_left_out: int = 0  # a search's trials: tuning, not results (the chosen configuration's runs are read)


def is_trial(r: dict) -> bool:
    """A search's trial (a rung run): how a configuration was tuned, not a result; its chosen configuration's
    re-runs (tag ``search_final``) are the results."""
    t = r.get("tags") or {}
    return t.get("search") is not None and t.get("search_final") is None


def tuned_fields(r: dict) -> set[str]:
    """The settings a search chose for this run's configuration (the re-run of a chosen configuration carries them in
    its ``params`` tag, ``method_args.rank`` as ``rank``): per-task choices, not what the entry is. An entry tuned by
    one search on several tasks is one row across them (its value per task is in the cell and the Tuned column)."""
    t = r.get("tags") or {}
    if t.get("search_final") is None:
        return set()
    return {str(p).rsplit(".", 1)[-1] for p in (t.get("params") or {})}


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
    """The learning rate of a cell: the best mean ``selection/<metric>`` over its seeds (the lowest for a
    lower-is-better metric, :func:`efficientft.vocab.higher_is_better`).

    When some learning rate has no selection score, falls back to ``dev/<metric>`` and says so
    ("dev (optimistic)": choosing on the reported split flatters every method). ``on="best_dev"`` (or ``"dev"``)
    chooses on that split instead: the "best dev score" convention of most papers, labelled optimistic.
    Returns (lr, basis, means). The choice is the sweep's (:mod:`efficientft.choice`): the first of equal means
    in learning-rate order.
    """
    order = (("selection", "selection"), ("dev", "dev (optimistic)")) if on == "selection" else \
        ((on, f"{on} (optimistic)"),)
    for split, basis in order:
        means = {lr: mean_score(recs, f"{split}/{metric}") for lr, recs in by_lr.items()}
        if all(m is not None for m in means.values()):
            return best({lr: means[lr] for lr in sorted(means, key=order_key)}, metric), basis, means
    return sorted(by_lr, key=order_key)[0], "none (no scores)", {}



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
    trials = sum(is_trial(r) for r in records)
    searches = {str(t["search_final"]): str(t.get("chosen_by")) for r in records
                if (t := r.get("tags") or {}).get("search_final") is not None}
    records = [r for r in records if not is_trial(r)]
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
    task_order = sorted(name_of, key=task_rank)
    if task_list:  # in the order asked; a name stands for every data set of that name
        task_order = list(dict.fromkeys(c for t in task_list for c in task_order
                                        if t in (c, name_of[c], LABEL_HASH.sub("", c))))

    flats = {r["run_key"]: {k: TUNED if k in tuned_fields(r) else v for k, v in flat_config(r["config"]).items()}
             for r in scored}
    names = sorted({k for f in flats.values() for k in f})
    per_task, common, method_settings, row_names = split_settings(scored, flats, names, tid, choose_lr)

    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    row_fields: dict[str, dict[str, Any]] = {}
    for r in scored:
        f = flats[r["run_key"]]
        ident = {k: f.get(k) for k in names if k not in per_task and not (choose_lr and k == "lr")}
        rk = freeze(ident)
        row_fields[rk] = ident
        groups[rk][tid[r["run_key"]]].append(r)

    row_names += [k for k in telling_fields(list(row_fields.values()), row_names) if k not in row_names]
    for settings in method_settings.values():  # a row column is no method's fixed setting
        for k in row_names:
            settings.pop(k, None)
    shown = shown_fields(row_names)
    rows = []
    for rk, by_task in groups.items():
        fields_ = row_fields[rk]
        row = Row(fields_, row_label(fields_, shown))
        for task, recs in by_task.items():
            row.cells[task] = _cell(task, recs, split, metric_of[task], choose_lr)
        rows.append(row)
    rows.sort(key=lambda r: row_sort_key(r.fields))
    entry = suite_order(groups)
    if entry is not None:  # one suite's runs: its methods in the order the suite lists them
        rows.sort(key=lambda r: entry[freeze(r.fields)])
    comparable = {t: all((r.get("provenance") or {}).get("comparable", True) for r in scored
                         if tid[r["run_key"]] == t) for t in task_order}
    superseded = [x for row in rows for c in row.cells.values() for x in c.superseded]
    return Collection(store.shown_as, split, task_order, {t: metric_of[t] for t in task_order}, rows, shown,
                      common, per_task, not_done, unscored, comparable, choose_lr,
                      {m: dict(sorted(v.items())) for m, v in sorted(method_settings.items())}, superseded,
                      searches, trials)


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
    baselines = [b for b in (baseline_of(by_rep[rep], f"{split}/{metric}") for rep in reps) if math.isfinite(b)]
    baseline = sum(baselines) / len(baselines) if baselines else math.nan
    learned = cell_learned(list(scores.values()), baseline, higher_is_better(metric)) if baselines else None
    return Cell(task, [by_rep[rep] for rep in reps], scores, summarize(list(scores.values())), lr, basis, candidates,
                superseded, baseline, learned)


def _lr(r: dict) -> float | None:
    f = number(r["config"].get("lr"))
    return None if math.isnan(f) else f


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return dict(out)



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
