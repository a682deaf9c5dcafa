"""Choosing a configuration by its mean score over seeds: the one rule behind the sweep's model selection
(:func:`efficientft.sweep.selection.select`) and the report's learning-rate choice
(:func:`efficientft.report.collect.select_lr`).

A candidate's score is the mean of its runs' finite scores (a missing, non-finite or boolean score does not
count); the best is the highest mean, or the lowest for a metric that is better lower
(:func:`efficientft.vocab.higher_is_better`: a loss, the forgetting score), the first of equal ones in the order the caller gives the candidates, so a
choice never depends on dictionary or store order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .vocab import higher_is_better

K = TypeVar("K")


def score(record: dict, name: str) -> float | None:
    """A run's score ``name`` (``selection/accuracy``), or None where it has none that counts."""
    v = (record.get("scores") or {}).get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def scores(records: Iterable[dict], name: str) -> list[float]:
    """The scores ``name`` of the runs that have one, in the runs' order."""
    return [s for s in (score(r, name) for r in records) if s is not None]


def mean_score(records: Iterable[dict], name: str) -> float | None:
    """The mean over runs (seeds) of their score ``name``; None where no run has one."""
    found = scores(records, name)
    return statistics.fmean(found) if found else None


def best(means: Mapping[K, Any], metric: str) -> K | None:
    """The candidate with the best mean of ``metric`` (the highest; the lowest where the metric is better lower),
    None meaning not scored, the first of equals in ``means``' order; None when no candidate is scored."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    scored = [k for k, m in means.items() if m is not None]
    return max(scored, key=lambda k: sign * means[k]) if scored else None
