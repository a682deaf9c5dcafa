"""Paired comparisons of two configurations, task by task, over the seeds both have.

By default the report answers the question of arXiv 2410.02247 wherever the store can: does raising λ on W_v help
(``targets=qv, λ=k`` vs the same with ``λ=1``), and does it match adapting W_k too (vs ``targets=qkv, λ=1`` with
everything else equal)? Users name their own pairs with ``--compare A B``. Every pair compared on more than one task is also
compared pooled over tasks (:data:`POOLED`): per seed, the mean over the tasks, paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .collect import Cell, Collection, Row, find_row
from .stats import Paired, paired

# The task of a comparison pooled over tasks: each seed's mean score over the tasks both rows have (the table's
# "Avg." column, per seed), compared over the seeds that have every one of those tasks.
POOLED = "mean over tasks"


@dataclass
class Comparison:
    a: Row
    b: Row
    task: str
    result: Paired


def _ratio(row: Row) -> float:
    try:
        return float(row.fields.get("lr_ratio"))
    except (TypeError, ValueError):
        return math.nan


def default_pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """For every row with λ ≠ 1: vs the same row at λ = 1, and vs ``qkv`` at λ = 1 (all else equal)."""

    def twin(row: Row, **changes) -> Row | None:
        want = {**row.fields, **changes}
        for r in rows:
            if r is not row and all(_same(r.fields.get(k), v) for k, v in want.items()) and \
                    set(r.fields) == set(want):
                return r
        return None

    pairs = []
    for r in rows:
        if _ratio(r) == 1.0 or not math.isfinite(_ratio(r)) or r.fields.get("role_lr"):
            continue
        for changes in ({"lr_ratio": 1.0}, {"lr_ratio": 1.0, "targets": "qkv"}):
            if changes.get("targets") == r.fields.get("targets"):
                continue
            other = twin(r, **changes)
            if other is not None and (r, other) not in pairs:
                pairs.append((r, other))
    return pairs


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def compare(col: Collection, specs: Sequence[tuple[str, str]] | None = None, test: str = "t") -> list[Comparison]:
    """Comparisons for the named pairs (row labels or key=value specs), or :func:`default_pairs`."""
    pairs = [(find_row(col.rows, a), find_row(col.rows, b)) for a, b in specs] if specs else default_pairs(col.rows)
    out = []
    for a, b in pairs:
        per_task = {task: _pairing(a.cells[task], b.cells[task]) for task in col.tasks
                    if task in a.cells and task in b.cells}
        for task, (xa, xb) in per_task.items():
            out.append(Comparison(a, b, task, paired(xa, xb, test)))
        if len(per_task) > 1:
            out.append(Comparison(a, b, POOLED, paired(*_pooled(list(per_task.values())), test)))
    return out


def _pooled(pairings: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Per replicate, the mean over tasks of A's and of B's scores, for the replicates every task has in both."""
    common = set.intersection(*(set(xa) & set(xb) for xa, xb in pairings))
    return ({rep: sum(xa[rep] for xa, _ in pairings) / len(pairings) for rep in common},
            {rep: sum(xb[rep] for _, xb in pairings) / len(pairings) for rep in common})


def _pairing(a: Cell, b: Cell) -> tuple[dict, dict]:
    """Both cells' scores keyed by replicate: runs pair when seed *and* data seed are equal (the same head init and
    data order). When both cells used one and the same data seed, the key is the seed alone (what tables show)."""
    if len({rep[1:] for rep in [*a.scores, *b.scores]}) == 1:
        return {rep[0]: v for rep, v in a.scores.items()}, {rep[0]: v for rep, v in b.scores.items()}
    return dict(a.scores), dict(b.scores)
