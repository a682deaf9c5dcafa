"""``eft report --leaderboard``: who is best on each task, who is tied with the best, and at what cost.

Built on the report's collection (:mod:`.collect`): an *entry* is a report row (method × targets × λ × method
arguments, and the learning rate unless it was chosen per cell; a setting a search chose per task is ``tuned`` in
the entry's name and its value is the cell's, :func:`.collect.tuned_fields`), scored per task by the mean over seeds
with its 95 % Student-t interval.

- **Tied with the best.** On each task the best entry is the one with the best mean in the metric's direction
  (:func:`efficientft.vocab.higher_is_better`). Every other entry is tested against it — paired t-test over the seeds
  both ran when their seeds match, Welch's t-test otherwise — and the p-values are Holm-adjusted over the task's
  comparisons with the best (:func:`.stats.holm`). An entry not distinguishable from the best at α = 0.05 after the
  adjustment is *tied*: a band, not one bold number. One that cannot be tested (fewer than 2 seeds on a side) is
  neither tied nor beaten: it is marked untested.
- **Against a reference** (LoRA on the same targets by default, λ = 1 preferred): each entry's difference with the
  same tests, Holm-adjusted over the task's comparisons with the reference.
- **Across tasks**: each entry's average rank over the tasks where every entry has a score (rank 1 the best, ties
  averaged), the Friedman test (``scipy.stats.friedmanchisquare``) and Nemenyi's post-hoc test with its
  critical-difference diagram (``scikit-posthocs``, the ``stats`` extra); fewer than 2 tasks or entries show why no
  ranks are shown.
- **Cost beside score** (:mod:`.cost`), each entry's tuned hyperparameters and tuning budget when its runs come
  from a search (tags ``search``/``trial`` on the trials, ``search_final`` on the chosen configuration's seeded
  re-runs; the trials themselves are never entries), and whether it learned (beat the task's trivial baseline,
  ``details.baselines``, beyond its own noise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats as sps

from ..errors import ConfigError
from ..store import Store
from ..vocab import higher_is_better
from .collect import Cell, Collection, Row, collect, find_row, is_trial
from .cost import CostRow, cost_rows
from .learned import cell_learned
from .rows import flat_config, freeze
from .stats import holm, paired, pareto_front
from .values import number

ALPHA = 0.05
DEFAULT_REFERENCE = "lora"
# cost field -> (title, whether more is better): the costs shown beside each score and plotted against it
BOARD_COSTS = {"trainable_params": ("trainable params", False), "peak_memory_mb": ("peak memory (MB)", False),
               "median_step_s": ("step time (s)", False), "tokens_per_s": ("tokens/s", True)}
_BUDGET = ("steps", "epochs")  # a trial's budget (its rung), not a tuned setting


@dataclass
class Test:
    """A two-sample comparison A − B: ``paired`` over matched seeds, else ``Welch``; ``p_holm`` within its family."""

    kind: str
    diff: float
    p: float
    p_holm: float = math.nan


@dataclass
class Tuning:
    """How an entry's configuration on a task was chosen: by a search (its tuned values and budget) or not."""

    search: str | None  # the search's name, None: no search
    tuned: dict[str, Any]  # the searched settings' chosen values (the lr when there was no search)
    trials: int = 0
    steps: int = 0  # optimizer steps summed over the trials

    def text(self) -> str:
        vals = ", ".join(f"{k}={number(v):g}" if math.isfinite(number(v)) else f"{k}={v}"
                         for k, v in self.tuned.items()) or "–"
        return f"{vals} ({self.trials} trials, {self.steps} steps)" if self.search else f"{vals} (no search)"


@dataclass
class Entry:
    row: Row
    cell: Cell
    place: int  # 1 = the best mean in the metric's direction
    best: bool
    tied: bool | None  # not distinguishable from the best after Holm (the best itself included); None: untested
    vs_best: Test | None  # None for the best
    reference: str | None  # the reference entry's label; None: it is the reference, or the task has none
    vs_reference: Test | None
    learned: bool | None  # None: no baseline recorded
    tuning: Tuning

    @property
    def label(self) -> str:
        return self.row.label


@dataclass
class TaskBoard:
    task: str
    metric: str
    higher: bool
    entries: list[Entry]  # best first
    pareto: dict[str, list[str]] = field(default_factory=dict)  # cost field -> non-dominated entries' labels


@dataclass
class Ranks:
    """Average ranks across tasks; ``why`` says why none (or no test) is shown."""

    labels: list[str] = field(default_factory=list)  # best average rank first
    mean_rank: dict[str, float] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    friedman_stat: float = math.nan
    friedman_p: float = math.nan
    nemenyi: Any = None  # a DataFrame of pairwise p-values (labels × labels), for the CD diagram
    critical_difference: float = math.nan  # Nemenyi's CD at alpha, in average ranks (:func:`critical_difference`)
    why: str = ""  # no ranks at all
    why_no_test: str = ""  # ranks, but no Friedman test / diagram
    unranked: list[str] = field(default_factory=list)  # entries missing a task: not ranked
    not_learned: list[tuple[str, str]] = field(default_factory=list)  # ranked (entry, task) cells that did not learn


@dataclass
class Leaderboard:
    collection: Collection
    tasks: list[TaskBoard]
    ranks: Ranks
    costs: dict[str, CostRow]  # entry label -> its cost row
    reference: str
    alpha: float = ALPHA
    plots: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _tags(r: dict) -> dict:
    return r.get("tags") or {}


def build_leaderboard(store: Store, split: str = "dev", tasks: Sequence[str] | None = None,
                      methods: Sequence[str] | None = None, tags: dict[str, str] | None = None,
                      metrics: dict[str, str] | None = None, select_lr: bool | str = False,
                      reference: str | None = None, alpha: float = ALPHA) -> Leaderboard:
    """The leaderboard of ``store`` (see the module docstring). ``reference``: a method name (its entry on the same
    targets), a row label or ``key=value`` pairs naming one entry; default LoRA on the same targets, where present."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1 (exclusive), got {alpha}.")
    records = store.runs()
    trials = [r for r in records if is_trial(r)]
    col = collect(store, split, tasks, methods,  # the search trials left out: tuning, not entries
                  tags, metrics, select_lr)
    ref_spec = (reference or DEFAULT_REFERENCE).strip()
    fixed = _fixed_reference(col, ref_spec, explicit=reference is not None)
    boards = [_task_board(col, t, ref_spec, fixed, trials, alpha) for t in col.tasks]
    costs = {c.label: c for c in cost_rows(col)}
    return Leaderboard(col, boards, _ranks(col, boards), costs, ref_spec if fixed is None else fixed.label, alpha)


def _fixed_reference(col: Collection, spec: str, explicit: bool) -> Row | None:
    """One named entry as every entry's reference, or None for a method name (its entry on the same targets)."""
    if "=" in spec or any(r.label == spec for r in col.rows):
        try:
            return find_row(col.rows, spec)
        except ConfigError as e:
            raise ConfigError(str(e).replace("--compare", "--reference")) from None
    have = sorted({str(r.fields.get("method")) for r in col.rows})
    if explicit and spec not in have:
        raise ConfigError(f"--reference {spec!r}: no entry of that method; accepted: a method ({', '.join(have)}), "
                          f"an entry's label or key=value pairs (method=lora,targets=qv,lambda=1).")
    return None


def _reference(row: Row, rows: list[Row], spec: str, fixed: Row | None) -> Row | None:
    if fixed is not None:
        return fixed if fixed in rows else None
    same = [r for r in rows if r.fields.get("method") == spec and r.fields.get("targets") == row.fields.get("targets")]
    same.sort(key=lambda r: r.fields.get("lr_ratio") is not None and number(r.fields.get("lr_ratio")) != 1.0)
    return same[0] if same else None


def compare_two(a: dict, b: dict) -> Test:
    """A − B: the paired t-test over the seeds when both ran the same seeds (≥ 2), else Welch's t-test. A difference
    with no spread at all (constant) is certain: p = 0 when it is not zero, 1 when it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical scores: scipy's precision note
        return _compare_two(a, b)


def _compare_two(a: dict, b: dict) -> Test:
    if set(a) == set(b) and len(a) > 1:
        pr = paired(a, b)
        p = pr.p_value
        if math.isnan(p) and pr.std_diff == 0:
            p = 0.0
        return Test("paired", pr.mean_diff, p)
    xa, xb = [float(v) for v in a.values()], [float(v) for v in b.values()]
    diff = sum(xa) / len(xa) - sum(xb) / len(xb) if xa and xb else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Test("", diff, math.nan)
    if len(set(xa)) == 1 and len(set(xb)) == 1:
        return Test("Welch", diff, 1.0 if diff == 0 else 0.0)
    return Test("Welch", diff, float(sps.ttest_ind(xa, xb, equal_var=False).pvalue))


def _adjust(tests: list[Test | None]) -> None:
    present = [t for t in tests if t is not None]
    for t, p in zip(present, holm([t.p for t in present]), strict=True):
        t.p_holm = p


def _task_board(col: Collection, task: str, ref_spec: str, fixed: Row | None, trials: list[dict],
                alpha: float) -> TaskBoard:
    metric = col.metrics[task]
    hib = higher_is_better(metric)
    rows = [r for r in col.rows if task in r.cells]
    sign = 1.0 if hib else -1.0
    rows.sort(key=lambda r: -sign * r.cells[task].summary.mean)
    best = rows[0]
    vs_best = [None if r is best else compare_two(r.cells[task].scores, best.cells[task].scores) for r in rows]
    refs = [_reference(r, rows, ref_spec, fixed) for r in rows]
    vs_ref = [None if ref is None or ref is r else compare_two(r.cells[task].scores, ref.cells[task].scores)
              for r, ref in zip(rows, refs, strict=True)]
    _adjust(vs_best)
    _adjust(vs_ref)
    entries = []
    for i, r in enumerate(rows):
        c = r.cells[task]
        tb = vs_best[i]
        tied = True if tb is None else None if math.isnan(tb.p_holm) else bool(tb.p_holm > alpha)
        entries.append(Entry(r, c, i + 1, r is best, tied, tb,
                             None if refs[i] is None or refs[i] is r else refs[i].label, vs_ref[i],
                             _learned(c, col.split, metric, hib), _tuning(c, trials)))
    board = TaskBoard(task, metric, hib, entries)
    for name, (_title, more) in BOARD_COSTS.items():
        pts = [((-1 if more else 1) * e.cell.cost(name), sign * e.cell.summary.mean) for e in entries]
        board.pareto[name] = [entries[i].label for i in pareto_front(pts)]
    return board


def _learned(c: Cell, split: str, metric: str, hib: bool) -> bool | None:
    key = f"{'dev' if split == 'best_dev' else split}/{metric}"
    base = [number(((r.get("details") or {}).get("baselines") or {}).get(key)) for r in c.runs]
    base = [b for b in base if math.isfinite(b)]
    if not base:
        return None
    return cell_learned(list(c.scores.values()), base[0], hib)


def _tuning(c: Cell, trials: list[dict]) -> Tuning:
    names = {_tags(r).get("search_final") for r in c.runs} - {None}
    lr = c.lr if c.lr is not None else (c.runs[0]["config"].get("lr") if c.runs else None)
    if not names:
        return Tuning(None, {"lr": lr} if lr is not None else {})
    search = str(sorted(names, key=str)[0])
    cfg = c.runs[0]["config"]
    same = ("task", "method", "targets", "lr_ratio", "model")
    mine = [t for t in trials if str(_tags(t).get("search")) == search
            and all(freeze(t["config"].get(k)) == freeze(cfg.get(k)) for k in same)]
    flats = [flat_config(t["config"]) for t in mine]
    varied = sorted({k for f in flats for k in f if k not in _BUDGET and len({freeze(g.get(k)) for g in flats}) > 1})
    final = flat_config(cfg)
    tuned = {k: final.get(k) for k in (varied or ["lr"])}
    steps = sum(int(number((t.get("cost") or {}).get("total_steps")))
                if math.isfinite(number((t.get("cost") or {}).get("total_steps")))
                else int(number(t["config"].get("steps")) if math.isfinite(number(t["config"].get("steps"))) else 0)
                for t in mine)
    # a trial is stored as one run per rung it reached: count the trials, and every rung's steps as budget spent
    numbers = {_tags(t).get("trial") for t in mine} - {None}
    return Tuning(search, tuned, len(numbers) if numbers else len(mine), steps)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference for ``k`` entries ranked on ``n`` tasks: q_α √(k(k+1) / 6n), q_α the
    studentized range's 1 − α quantile for k groups over √2 (Demšar 2006, JMLR 7, eq. 7 and Table 5a). Two average
    ranks closer than this are not distinguished; it shrinks as 1/√n, so a leaderboard of many entries on few tasks
    distinguishes few pairs, or none."""
    q = float(sps.studentized_range.ppf(1 - alpha, k, math.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * n))


def _ranks(col: Collection, boards: list[TaskBoard]) -> Ranks:
    if len(boards) < 2:
        return Ranks(why=f"Ranks across tasks need at least 2 tasks; this leaderboard has {len(boards)}.")
    full = [r for r in col.rows if all(t in r.cells for t in col.tasks)]
    if len(full) < 2:
        return Ranks(why=f"Ranks across tasks need at least 2 entries scored on every task "
                         f"({', '.join(col.tasks)}); {len(full)} {'is' if len(full) == 1 else 'are'}.")
    import pandas as pd

    labels = [r.label for r in full]
    means = pd.DataFrame({r.label: [r.cells[t].summary.mean for t in col.tasks] for r in full}, index=col.tasks)
    ranks = pd.DataFrame([means.loc[b.task].rank(ascending=not b.higher, method="average") for b in boards],
                         index=col.tasks)
    mean_rank = ranks.mean(axis=0)
    order = sorted(labels, key=lambda lab: (mean_rank[lab], labels.index(lab)))
    out = Ranks(order, {lab: float(mean_rank[lab]) for lab in order}, list(col.tasks),
                unranked=[r.label for r in col.rows if r not in full],
                not_learned=[(e.row.label, b.task) for b in boards for e in b.entries
                             if e.learned is False and e.row in full])
    if len(full) < 3:
        out.why_no_test = "The Friedman test needs at least 3 entries scored on every task; there are 2."
        return out
    res = sps.friedmanchisquare(*[ranks[lab].to_numpy() for lab in labels])
    out.friedman_stat, out.friedman_p = float(res.statistic), float(res.pvalue)
    out.critical_difference = critical_difference(len(labels), len(col.tasks))
    try:
        import scikit_posthocs as sp
    except ImportError:
        out.why_no_test = ("No Nemenyi test or critical-difference diagram: install the stats extra "
                           "(pip install 'efficientft[stats]', scikit-posthocs).")
        return out
    nem = sp.posthoc_nemenyi_friedman(ranks[labels].to_numpy())
    nem.index = nem.columns = labels
    out.nemenyi = nem
    return out
