"""Did a configuration learn? Its scores against the trivial baseline each run records.

Every run stores, per evaluation split, each metric scored on the trivial prediction (``details.baselines``: the
training split's majority class, its mean for regression, the most frequent answer for generation; see
:mod:`efficientft.tasks.metrics`) and whether its own predictions collapsed to one class or a constant
(``details.collapsed``). A cell whose runs do not beat that baseline beyond their own noise *did not learn*: its
score is the majority class's, not a method's, and a table, a comparison or a pooled claim must say so rather than
rank it or average it in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..vocab import higher_is_better as _higher
from .stats import summarize
from .values import number

# A score must beat its baseline by more than this (on the metric's own scale: 0.005 is half a point of accuracy,
# of F1 or of MCC ×100): a run at the majority class ± rounding has not learned.
TOLERANCE = 0.005
NOT_LEARNED = "✗"
LEGEND = (f"{NOT_LEARNED} did not learn: the runs do not beat the trivial baseline (majority class, training mean or "
          "most frequent answer) beyond their own noise (the 95 % CI of the mean over seeds; one run: by more than "
          f"{TOLERANCE:g}).")


def cell_learned(scores: Sequence[float], baseline: float, higher_is_better: bool) -> bool:
    """Whether runs scoring ``scores`` learned, i.e. beat the trivial ``baseline`` beyond their own noise.

    - Several runs (seeds): the 95 % t confidence interval of their mean lies wholly on the better side of the
      baseline (its lower end above it, or its upper end below it for a lower-is-better metric) *and* the mean beats
      it by more than :data:`TOLERANCE`. Seeds that all sit at the majority class (a zero-width interval) did not
      learn.
    - One run: it beats the baseline by more than :data:`TOLERANCE` (it has no spread to judge noise by).
    - No finite score: did not learn. An unknown (non-finite) baseline: learned, as nothing says otherwise (records
      written before baselines were stored carry none).
    """
    xs = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
    if not math.isfinite(baseline):
        return True
    if not xs:
        return False
    sign = 1.0 if higher_is_better else -1.0
    mean = sum(xs) / len(xs)
    if sign * (mean - baseline) <= TOLERANCE:
        return False
    if len(xs) == 1:
        return True
    s = summarize(xs)
    bound = s.ci_low if higher_is_better else s.ci_high
    return sign * (bound - baseline) > 0


def baseline_of(rec: Mapping[str, Any], key: str) -> float:
    """The trivial baseline a run recorded for score ``key`` (``<split>/<metric>``; ``best_dev/...`` reads the dev
    split's), NaN where it recorded none."""
    baselines = (rec.get("details") or {}).get("baselines") or {}
    if key.startswith("best_dev/"):
        key = "dev/" + key.split("/", 1)[1]
    return number(baselines.get(key))


def run_learned(rec: Mapping[str, Any]) -> tuple[float, bool | None]:
    """(baseline, learned?) of one run's main score; learned is None where the run has no score or no baseline."""
    key = rec.get("main_metric") or ""
    baseline, score = baseline_of(rec, key), number(rec.get("main_score"))
    if not key or not math.isfinite(baseline) or not math.isfinite(score):
        return baseline, None
    return baseline, cell_learned([score], baseline, _higher(key))
