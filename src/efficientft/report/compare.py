"""Paired comparisons of two configurations, task by task, over the seeds both have.

By default the report answers the question of arXiv 2410.02247 wherever the store can: does raising λ on W_v help
(``targets=qv, λ=k`` vs the same with ``λ=1``), and does it match adapting W_k too (vs ``targets=qkv, λ=1`` with
everything else equal)? Users name their own pairs with ``--compare A B``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .collect import Cell, Collection, Row, find_row
from .stats import Paired, paired


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
        for task in col.tasks:
            if task in a.cells and task in b.cells:
                out.append(Comparison(a, b, task, paired(*_pairing(a.cells[task], b.cells[task]), test)))
    return out


def _pairing(a: Cell, b: Cell) -> tuple[dict, dict]:
    """Both cells' scores keyed by replicate: runs pair when seed *and* data seed are equal (the same head init and
    data order). When both cells used one and the same data seed, the key is the seed alone (what tables show)."""
    if len({rep[1:] for rep in [*a.scores, *b.scores]}) == 1:
        return {rep[0]: v for rep, v in a.scores.items()}, {rep[0]: v for rep, v in b.scores.items()}
    return dict(a.scores), dict(b.scores)
