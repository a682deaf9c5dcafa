"""Paired comparisons of two configurations, task by task, over the seeds both have.

By default the report answers the questions of arXiv 2410.02247 wherever the store can: at equal rank, does adapting
W_q,W_v match adapting W_k too (``targets=qv`` vs ``targets=qkv``, both at ``λ=1``, everything else equal)? Does
raising λ on W_v help (``targets=qv, λ=k`` vs the same with ``λ=1``, and vs ``qkv``)? And does the best λ beat
``qkv`` (:func:`best_ratio`: per task, the λ of a family of rows chosen like the learning rate, on the selection
split, never on the reported one)? Users name their own pairs with ``--compare A B``. Every pair compared on more than one task is also
compared pooled over tasks (:data:`POOLED`): per seed, the mean over the tasks, paired by seed. Every p-value is
also adjusted (Holm–Bonferroni, :func:`~efficientft.report.stats.holm`) over all the comparisons one call makes.

A cell that did not learn (:mod:`.learned`: its runs do not beat the trivial baseline) is never averaged into a pooled
comparison: the pooled line is over the tasks where both rows learned, and it names the tasks it left out
(:attr:`Comparison.excluded`); a per-task comparison with such a cell names it (:attr:`Comparison.not_learned`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .collect import Cell, Collection, Row, find_row, select_lr
from .stats import Paired, holm, paired

# The task of a comparison pooled over tasks: each seed's mean score over the tasks both rows have (the table's
# "Avg." column, per seed), compared over the seeds that have every one of those tasks.
POOLED = "mean over tasks"
# Why a report has no comparisons (the Markdown and HTML reports both say it, then name --compare A B)
NO_PAIRS = "No pairs to compare (no row has a qkv λ = 1 twin or, at λ ≠ 1, a λ = 1 twin; name pairs with "


@dataclass
class Comparison:
    a: Row
    b: Row
    task: str
    result: Paired
    not_learned: tuple[str, ...] = ()  # "<row label> on <task>" of each compared cell that did not learn
    excluded: tuple[str, ...] = ()  # pooled: the tasks left out because a cell there did not learn

    @property
    def caveat(self) -> str:
        """What a reader must know before reading the line: the cells that did not learn, the tasks left out."""
        parts = []
        if self.not_learned:
            parts.append("did not learn: " + "; ".join(self.not_learned))
        if self.excluded:
            parts.append("excludes " + ", ".join(self.excluded) + " (a cell did not learn)")
        return " — ".join(parts)


def _ratio(row: Row) -> float:
    try:
        return float(row.fields.get("lr_ratio"))
    except (TypeError, ValueError):
        return math.nan


def _twin(rows: Sequence[Row], row: Row, **changes) -> Row | None:
    """The row with ``row``'s settings but ``changes`` (the same set of settings, all else equal)."""
    want = {**row.fields, **changes}
    for r in rows:
        if r is not row and all(_same(r.fields.get(k), v) for k, v in want.items()) and set(r.fields) == set(want):
            return r
    return None


def default_pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """Every row vs ``qkv`` at λ = 1, and every row with λ ≠ 1 vs the same row at λ = 1 (all else equal)."""
    pairs = []
    for r in rows:
        if not math.isfinite(_ratio(r)) or r.fields.get("role_lr"):
            continue
        for changes in ({"lr_ratio": 1.0}, {"lr_ratio": 1.0, "targets": "qkv"}):
            if all(_same(r.fields.get(k), v) for k, v in changes.items()):
                continue  # the row itself
            other = _twin(rows, r, **changes)
            if other is not None and (r, other) not in pairs:
                pairs.append((r, other))
    return pairs


def best_ratio(col: Collection) -> list[tuple[Row, dict[str, Row], Row]]:
    """Each family of rows that differ only in λ (two λ or more, one of them 1) with a ``qkv`` λ = 1 twin:
    (the family's λ = 1 row, task -> the row of the λ chosen for that task, the ``qkv`` row).

    The λ is chosen per task as the learning rate is (:func:`select_lr`): the best mean selection score over the
    seeds, the reported split only where a selection score is missing (and then said, in the row's label). The
    chosen row's label says which λ won: ``lora qv r=8 λ=best (4, by selection)``.
    """
    out = []
    for one in col.rows:
        if _ratio(one) != 1.0 or one.fields.get("role_lr"):
            continue
        family = [one] + [r for r in col.rows if r is not one and math.isfinite(_ratio(r)) and
                          _twin(col.rows, r, lr_ratio=1.0) is one]
        qkv = _twin(col.rows, one, targets="qkv")
        if len(family) < 2 or qkv is None:
            continue
        chosen = {}
        for task in col.tasks:
            having = {_ratio(r): r for r in family if task in r.cells}
            if len(having) < 2 or task not in qkv.cells:
                continue
            lam, basis, _ = select_lr({k: r.cells[task].runs for k, r in having.items()}, col.metrics[task],
                                      col.select_lr if isinstance(col.select_lr, str) else "selection")
            best = having[lam]
            chosen[task] = Row({**best.fields, "basis": basis}, _best_label(one.label, f"{lam:g}, by {basis}"),
                               {task: best.cells[task]})
        if chosen:
            out.append((one, chosen, qkv))
    return out


def _best_label(label: str, what: str) -> str:
    return re.sub(r"λ=1(?=\s|$)", f"λ=best ({what})", label, count=1)


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def compare(col: Collection, specs: Sequence[tuple[str, str]] | None = None, test: str = "t") -> list[Comparison]:
    """Comparisons for the named pairs (row labels or key=value specs), or :func:`default_pairs` and then the best λ
    of each family against ``qkv`` (:func:`best_ratio`), per task and pooled over tasks; each result's ``p_holm`` is
    its p-value adjusted over all of them."""
    pairs = [(find_row(col.rows, a), find_row(col.rows, b)) for a, b in specs] if specs else default_pairs(col.rows)
    out = []
    for a, b in pairs:
        tasks = [task for task in col.tasks if task in a.cells and task in b.cells]
        for task in tasks:
            out.append(Comparison(a, b, task, paired(*pairing(a.cells[task], b.cells[task]), test),
                                  _not_learned(task, a, b)))
        if len(tasks) > 1:
            out.append(_pooled_comparison(a, b, {t: (a, b) for t in tasks}, test))
    for one, chosen, qkv in ([] if specs else best_ratio(col)):
        for task, row in chosen.items():
            out.append(Comparison(row, qkv, task, paired(*pairing(row.cells[task], qkv.cells[task]), test),
                                  _not_learned(task, row, qkv)))
        if len(chosen) > 1:
            bases = " / ".join(sorted({row.fields["basis"] for row in chosen.values()}))
            pooled = Row({**one.fields, "lr_ratio": "best"}, _best_label(one.label, f"per task, by {bases}"))
            out.append(_pooled_comparison(pooled, qkv, {t: (row, qkv) for t, row in chosen.items()}, test))
    adjusted = holm([c.result.p_value for c in out])
    return [dataclasses.replace(c, result=dataclasses.replace(c.result, p_holm=p)) for c, p in zip(out, adjusted, strict=True)]


def _not_learned(task: str, *rows: Row) -> tuple[str, ...]:
    return tuple(f"{r.label} on {task}" for r in rows if r.cells[task].learned is False)


def _pooled_comparison(a: Row, b: Row, by_task: dict[str, tuple[Row, Row]], test: str) -> Comparison:
    """A against B pooled over the tasks of ``by_task`` (task -> the two rows compared there) where both cells
    learned; the others are named in :attr:`Comparison.excluded`, never averaged in."""
    learned = {t: rows for t, rows in by_task.items() if not _not_learned(t, *rows)}
    excluded = tuple(t for t in by_task if t not in learned)
    pairings = [pairing(ra.cells[t], rb.cells[t]) for t, (ra, rb) in learned.items()]
    result = paired(*_pooled(pairings), test) if pairings else paired({}, {}, test)
    return Comparison(a, b, POOLED, result, excluded=excluded)


def _pooled(pairings: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Per replicate, the mean over tasks of A's and of B's scores, for the replicates every task has in both."""
    common = set.intersection(*(set(xa) & set(xb) for xa, xb in pairings))
    return ({rep: sum(xa[rep] for xa, _ in pairings) / len(pairings) for rep in common},
            {rep: sum(xb[rep] for _, xb in pairings) / len(pairings) for rep in common})


def pairing(a: Cell, b: Cell) -> tuple[dict, dict]:
    """Both cells' scores keyed by replicate: runs pair when seed *and* data seed are equal (the same head init and
    data order). When both cells used one and the same data seed, the key is the seed alone (what tables show)."""
    if len({rep[1:] for rep in [*a.scores, *b.scores]}) == 1:
        return {rep[0]: v for rep, v in a.scores.items()}, {rep[0]: v for rep, v in b.scores.items()}
    return dict(a.scores), dict(b.scores)
