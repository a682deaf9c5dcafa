"""The statistics behind a table cell and a comparison: what lets a reader trust a difference.

- A cell aggregates seeds: mean, sample standard deviation (ddof=1) and a 95% confidence interval of the mean from
  Student's t distribution, ``mean ± t(0.975, n-1) · s / √n``.
- A comparison of two configurations pairs their runs by seed (same seed = same data order and head init) and
  tests the differences (with a 95% t confidence interval of the mean difference): the paired t-test (``scipy.stats.ttest_rel``) or the Wilcoxon signed-rank test, with the
  effect size Cohen's d_z = mean(d) / sd(d) (Cohen 1988, §2.3.5; Lakens 2013, "Calculating and reporting effect
  sizes", eq. 6).
- A report makes many comparisons at once (every λ against λ = 1 and against ``qkv``, per task and pooled), so each
  p-value also has its Holm–Bonferroni adjustment over the report's whole family of comparisons (Holm 1979, "A simple
  sequentially rejective multiple test procedure", Scand. J. Statist. 6: with the m finite p-values in increasing
  order, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))``). It controls the family-wise error rate under any
  dependence between the tests, which the pooled and per-task tests of one pair have.

- "No difference shown" is half an answer: each comparison also gives the smallest true difference its design
  detects with 80 % power at α = 0.05 (:func:`detectable`: two-sided t-test, from the noncentral t distribution,
  as statsmodels' ``TTestPower`` solves it) and the paired seeds a given difference would need (:func:`seeds_for`),
  both at the spread of the differences measured.

Fewer than 3 seeds gives no usable spread; callers flag such cells (``FEW_SEEDS``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from .values import order_key

FEW_SEEDS = 3  # a cell with fewer seeds than this is flagged
TESTS = ("t", "wilcoxon")


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation (ddof=1) and 95% t confidence interval of ``n`` values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def few(self) -> bool:
        return self.n < FEW_SEEDS


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, float("nan"), float("nan"), float("nan"))
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of A against B over matched seeds: the difference is A − B."""

    n: int
    seeds: tuple = field(default=())
    mean_diff: float = float("nan")
    std_diff: float = float("nan")
    p_value: float = float("nan")
    d_z: float = float("nan")
    test: str = "t"
    # 95% t confidence interval of the mean difference, mean ± t(0.975, n-1) · sd / √n
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    # the p-value adjusted for the family of comparisons it was made in (:func:`holm`); NaN until adjusted
    p_holm: float = float("nan")

    @property
    def few(self) -> bool:
        return self.n < FEW_SEEDS

    @property
    def detectable(self) -> float:
        """The smallest true mean difference this comparison detects with 80 % power (:func:`detectable`)."""
        if self.few or not math.isfinite(self.std_diff):
            return float("nan")
        return detectable(self.std_diff / math.sqrt(self.n), self.n - 1)


POWER = 0.8


def _power(delta: float, se: float, df: int, alpha: float) -> float:
    """Power of the two-sided t-test (``df`` degrees of freedom) of a mean whose standard error is ``se``, when the
    true mean is ``delta``: P(|T| > t_crit) with T noncentral t, noncentrality delta / se."""
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = delta / se
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def detectable(se: float, df: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The true mean difference a two-sided t-test at ``alpha`` detects with ``power``, given the standard error
    ``se`` of the estimated difference and its degrees of freedom: a paired comparison of n seeds has se = sd/√n,
    df = n − 1 (statsmodels' ``TTestPower.solve_power(nobs=n)`` times sd; tested equal). NaN where no spread is
    known."""
    if not (math.isfinite(se) and se > 0 and df >= FEW_SEEDS - 1):  # two seeds give no usable spread
        return float("nan")
    from scipy.optimize import brentq

    hi = se
    while (p := _power(hi, se, df, alpha)) < power:
        hi *= 2
    if not math.isfinite(p):
        return float("nan")
    return float(brentq(lambda d: _power(d, se, df, alpha) - power, 0.0, hi, xtol=se * 1e-9))


def seeds_for(delta: float, sd: float, alpha: float = 0.05, power: float = POWER, most: int = 10_000) -> int | None:
    """The paired seeds a paired t-test needs to detect a true difference ``delta`` with ``power``, when the
    differences spread with standard deviation ``sd`` (None: more than ``most``, or no spread known)."""
    if not (math.isfinite(sd) and sd > 0 and delta > 0):
        return None
    n = 2
    while n <= most:
        if _power(delta, sd / math.sqrt(n), n - 1, alpha) >= power:
            return n
        n = n + 1 if n < 100 else int(n * 1.05) + 1
    return None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given: with the m finite p-values sorted increasing,
    ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))`` (Holm 1979). A NaN (no test applied) stays NaN and does not
    count in m. Rejecting where ``p̃ ≤ α`` keeps the chance of any false rejection in the family at most α."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    m = len(finite)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def cohens_dz(diffs: Sequence[float]) -> float:
    """Cohen's d_z: the mean paired difference in units of the differences' standard deviation (ddof=1)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        m = float(d.mean())
        return 0.0 if m == 0.0 else math.copysign(math.inf, m)
    return float(d.mean()) / sd


def paired(a: dict, b: dict, test: str = "t") -> Paired:
    """Compare ``a`` and ``b`` (seed → score) on the seeds they share.

    ``test`` is ``"t"`` (paired t-test) or ``"wilcoxon"`` (signed-rank, two-sided). Identical differences
    (zero spread) give a p-value of 1 when they are all zero and NaN otherwise, as no test applies.
    """
    if test not in TESTS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown test {test!r}; accepted: {', '.join(TESTS)}.")
    seeds = tuple(sorted(set(a) & set(b), key=order_key))
    xa = np.asarray([a[s] for s in seeds], dtype=np.float64)
    xb = np.asarray([b[s] for s in seeds], dtype=np.float64)
    n = len(seeds)
    if n == 0:
        return Paired(0, seeds, test=test)
    d = xa - xb
    mean_diff = float(d.mean())
    std_diff = float(d.std(ddof=1)) if n > 1 else float("nan")
    p = float("nan")
    if n > 1:
        if np.all(d == 0):
            p = 1.0
        elif std_diff > 0:
            if test == "t":
                p = float(sps.ttest_rel(xa, xb).pvalue)
            else:
                p = float(sps.wilcoxon(xa, xb).pvalue)
    ci = summarize(d.tolist())
    return Paired(n, seeds, mean_diff, std_diff, p, cohens_dz(d), test, ci.ci_low, ci.ci_high)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, for *lower* cost (x) and *higher* score (y).

    A point dominates another when its cost is no higher and its score no lower, and one of the two is strictly
    better. Returned in order of increasing cost. Points with a non-finite coordinate are never on the front.
    """
    ok = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    order = sorted(ok, key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        x, y = points[i]
        if y > best:
            front.append(i)
            best = y
        elif y == best and front and points[front[-1]][0] == x:
            front.append(i)  # an exact duplicate of a front point is not dominated either
    return front
