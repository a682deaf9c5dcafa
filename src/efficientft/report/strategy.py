"""The strategy of arXiv 2410.02247 on each method, as a two-factor experiment (method × strategy).

A store that holds, for several methods, the reference arm ``targets=qkv, λ=1`` and other arms of the same method
(``qv`` at λ = 1, ``qv`` with λ tuned by a search or fixed, everything else equal: the suite ``strategy``) gets:

- **the strategy's effect per method**, each arm against the method's ``qkv`` λ = 1 arm, pooled over the tasks where
  both learned (:mod:`.learned`; the others are named, never averaged in). Runs pair by replicate (seed and data
  seed: the same head initialisation and data order), so the effect is the mean paired difference
  ``d̄ = mean_{t,s} (score_arm(t, s) − score_qkv(t, s))`` over tasks t and seeds s, with tasks as fixed blocks: its
  standard error is the within-task spread of the differences, ``sqrt(Σ_t Σ_s (d_ts − d̄_t)² / (T(S−1))) / sqrt(TS)``
  on ``T(S−1)`` degrees of freedom (a randomised-block analysis of the paired differences: Montgomery, *Design and
  Analysis of Experiments*, ch. 4), which is what "on these tasks" admits. The p-values of one arm over the methods
  are adjusted together (Holm), and each method gets one plain line: *helps* / *hurts* (adjusted p ≤ 0.05, by the
  sign) or *no detectable effect at n = TS* with its confidence interval.
- **whether the effect depends on the method** (the interaction): every final run's score by least squares, in
  nested models — each method's level on each task as a block; + the arm (the strategy, as if the same for every
  method); + the arm per method — and the F test of each addition against the full model's residual (for a complete
  design, the type-2 ANOVA of ``score ~ C(method) * C(strategy) + C(method):C(task)``, as statsmodels computes it:
  tested). The ``method × strategy`` row says whether the strategy's effect depends on the method.
- **what the arm saves**: the ratio of its trainable parameters and of its median step time to the ``qkv`` arm's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats as sps

from ..vocab import higher_is_better
from .collect import Collection, Row
from .compare import pairing
from .cost import cpu_share, shared
from .rows import TUNED
from .stats import detectable, holm
from .tables import md_escape
from .values import number, score_scale

REFERENCE = "QKV λ=1"
ALPHA = 0.05
STRATEGY_FIELDS = ("targets", "lr_ratio")  # what an arm changes; everything else is the method's configuration


@dataclass
class Effect:
    """One arm of one method against the method's ``qkv`` λ = 1 arm, pooled over the tasks where both learned."""

    method: str
    arm: str
    tasks: tuple[str, ...]  # pooled over
    excluded: tuple[str, ...]  # a cell did not learn there
    n: int  # paired differences (tasks × seeds)
    diff: float  # mean paired difference, score points ×100 where the metric is a fraction
    ci_low: float
    ci_high: float
    p_value: float
    per_task: dict[str, float]  # task -> mean paired difference there
    params_ratio: float  # trainable parameters, arm / qkv
    step_ratio: float  # median step time, arm / qkv
    lambdas: dict[str, float] = field(default_factory=dict)  # task -> λ the arm used (a tuned arm: the chosen one)
    p_holm: float = math.nan
    shared_cpu: bool = False  # either arm's runs had under 80 % of their cores (median): the step times are noisy
    detectable: float = math.nan  # the smallest true effect this design detects with 80 % power (stats.detectable)

    @property
    def step_text(self) -> str:
        return _pct(self.step_ratio) + (" (CPU shared)" if self.shared_cpu and math.isfinite(self.step_ratio) else "")

    @property
    def verdict(self) -> str:
        if self.n < 2 or not math.isfinite(self.p_value):
            return f"not measured (n = {self.n})"
        if self.p_holm <= ALPHA:
            return "helps" if self.diff > 0 else "hurts"
        return f"no detectable effect at n = {self.n}"


@dataclass
class Analysis:
    effects: list[Effect]
    anova: list[dict[str, Any]] | None  # the type-2 ANOVA table's rows (term, df, F, p), or None
    anova_note: str  # why there is no table, or the model and its size
    n_runs: int

    def interaction(self) -> dict[str, Any] | None:
        return next((r for r in self.anova or [] if r["term"] == "method × strategy"), None)


def arm_name(row: Row) -> str:
    lam = row.fields.get("lr_ratio", 1.0)
    shown = TUNED if lam == TUNED else f"{float(lam):g}" if _finite(lam) else str(lam)
    return f"{str(row.fields.get('targets', '')).upper()} λ={shown}"


def _finite(v: Any) -> bool:
    return math.isfinite(number(v))


def _family(row: Row) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.fields.items() if k not in STRATEGY_FIELDS))


def families(col: Collection) -> list[tuple[str, Row, list[Row]]]:
    """(method label, its ``qkv`` λ = 1 row, its other arms) for every method with the reference and another arm."""
    groups: dict[tuple, list[Row]] = {}
    for r in col.rows:
        if not r.fields.get("role_lr"):
            groups.setdefault(_family(r), []).append(r)
    out = []
    for rows in groups.values():
        ref = [r for r in rows if str(r.fields.get("targets")) == "qkv" and _finite(r.fields.get("lr_ratio", 1.0))
               and float(r.fields.get("lr_ratio", 1.0)) == 1.0]
        others = [r for r in rows if r not in ref]
        if len(ref) == 1 and others:
            out.append((str(ref[0].fields.get("method")), ref[0], others))
    methods = [m for m, _, _ in out]
    return [(m if methods.count(m) == 1 else ref.label, ref, others) for m, ref, others in out]


def _points(col: Collection, task: str) -> float:
    """A score's factor into points where + is better: ×100 as the tables show it (:func:`score_scale`), the sign
    flipped for a lower-is-better metric."""
    higher = higher_is_better(col.metrics[task])
    return score_scale(col.metrics[task], higher) * (1.0 if higher else -1.0)


def _pairs(a: Row, b: Row, task: str) -> list[float]:
    """A − B per replicate both have, paired as every comparison pairs them (:func:`.compare.pairing`)."""
    xa, xb = pairing(a.cells[task], b.cells[task])
    return [xa[k] - xb[k] for k in sorted(set(xa) & set(xb))]


def effect(col: Collection, method: str, ref: Row, arm: Row) -> Effect:
    tasks = [t for t in col.tasks if t in ref.cells and t in arm.cells]
    learned = [t for t in tasks if ref.cells[t].learned is not False and arm.cells[t].learned is not False]
    excluded = tuple(t for t in tasks if t not in learned)
    d: dict[str, list[float]] = {}
    for t in learned:
        xs = [_points(col, t) * x for x in _pairs(arm, ref, t)]  # a positive difference is always "better"
        if xs:
            d[t] = xs
    n = sum(len(xs) for xs in d.values())
    df = sum(len(xs) - 1 for xs in d.values())
    nan = math.nan
    diff = statistics.fmean(x for xs in d.values() for x in xs) if n else nan
    if df > 0:
        within = sum((x - statistics.fmean(xs)) ** 2 for xs in d.values() for x in xs) / df
        se = math.sqrt(within / n)
        half = float(sps.t.ppf(0.975, df)) * se
        if se > 0:
            p = float(2 * sps.t.sf(abs(diff) / se, df))
        else:
            p = 0.0 if diff != 0 else 1.0
        lo, hi = diff - half, diff + half
        can_detect = detectable(se, df)
    else:
        lo = hi = p = can_detect = nan
    return Effect(method, arm_name(arm), tuple(d), excluded, n, diff, lo, hi, p,
                  {t: statistics.fmean(xs) for t, xs in d.items()},
                  _ratio(arm, ref, "trainable_params", tasks), _ratio(arm, ref, "median_step_s", tasks),
                  {t: _lambda(arm, t) for t in tasks},
                  shared_cpu=any(_shared(row, tasks) for row in (arm, ref)), detectable=can_detect)


def _shared(row: Row, tasks: Sequence[str]) -> bool:
    return shared(cpu_share(r for t in tasks if t in row.cells for r in row.cells[t].runs))


def _ratio(a: Row, b: Row, cost: str, tasks: Sequence[str]) -> float:
    x, y = a.cost(cost, tasks), b.cost(cost, tasks)
    return x / y if math.isfinite(x) and math.isfinite(y) and y > 0 else math.nan


def _lambda(row: Row, task: str) -> float:
    vals = [float(r["config"].get("lr_ratio", 1.0)) for r in row.cells[task].runs]
    return statistics.median(vals) if vals else math.nan


def analyse(col: Collection) -> Analysis | None:
    """The analysis, or None where the collection holds no method with a ``qkv`` λ = 1 arm and another arm."""
    fams = families(col)
    if not fams:
        return None
    effects = [effect(col, m, ref, arm) for m, ref, arms in fams for arm in arms]
    for name in dict.fromkeys(e.arm for e in effects):  # Holm over the methods, per arm
        mine = [e for e in effects if e.arm == name]
        for e, p in zip(mine, holm([e.p_value for e in mine]), strict=True):
            e.p_holm = p
    table, note, n_runs = _anova(col, fams)
    return Analysis(effects, table, note, n_runs)


def _anova(col: Collection, fams: list[tuple[str, Row, list[Row]]]) -> tuple[list[dict] | None, str, int]:
    data: dict[str, list] = {"score": [], "method": [], "strategy": [], "task": []}
    for m, ref, arms in fams:
        for row in (ref, *arms):
            for t, c in row.cells.items():
                if any(r.cells.get(t) is None or r.cells[t].learned is False for r in (ref, *arms)):
                    continue  # a task where one of the method's arms did not learn: left out, as in the effects
                for v in c.scores.values():
                    data["score"].append(_points(col, t) * v)
                    data["method"].append(m)
                    data["strategy"].append(arm_name(row))
                    data["task"].append(t)
    n = len(data["score"])
    if len(set(data["method"])) < 2 or len(set(data["strategy"])) < 2:
        return None, "the interaction needs two methods or more with two arms or more each", n
    y = np.asarray(data["score"], dtype=np.float64)
    blocks = [f"{m}|{t}" for m, t in zip(data["method"], data["task"], strict=True)]
    ref = REFERENCE
    cells = [f"{m}|{a}" if a != ref else "" for m, a in zip(data["method"], data["strategy"], strict=True)]
    arms = [a if a != ref else "" for a in data["strategy"]]
    x0 = _dummies(blocks, keep_all=True)
    x1 = np.hstack([x0, _dummies(arms)])
    x2 = np.hstack([x0, _dummies(cells)])
    (rss0, r0), (rss1, r1), (rss2, r2) = (_fit(x, y) for x in (x0, x1, x2))
    df_resid = n - r2
    if df_resid < 1:
        return None, f"no residual degrees of freedom ({n} runs): more seeds are needed", n
    mse = rss2 / df_resid
    rows = []
    for term, gain, df in (("strategy", rss0 - rss1, r1 - r0), ("method × strategy", rss1 - rss2, r2 - r1)):
        f = (gain / df) / mse if df > 0 and mse > 0 else math.nan
        rows.append({"term": term, "df": float(df), "sum_sq": float(gain), "F": f,
                     "p": float(sps.f.sf(f, df, df_resid)) if math.isfinite(f) else math.nan})
    rows.append({"term": "residual", "df": float(df_resid), "sum_sq": float(rss2), "F": math.nan, "p": math.nan})
    return rows, (f"least squares over {n} final runs: each method's level on each task a block, then the arm "
                  f"(strategy), then the arm per method (method × strategy); F tests of the nested models"), n


def _dummies(labels: list[str], keep_all: bool = False) -> np.ndarray:
    """One column per distinct label (the empty label, the reference, gets none unless ``keep_all``)."""
    levels = sorted({x for x in labels if keep_all or x})
    return np.asarray([[1.0 if x == lv else 0.0 for lv in levels] for x in labels]).reshape(len(labels), len(levels))


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Residual sum of squares and rank of the least-squares fit of ``y`` on the columns of ``x``."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    return float(resid @ resid), int(np.linalg.matrix_rank(x))


def _pct(r: float) -> str:
    return "–" if not math.isfinite(r) else f"{(r - 1) * 100:+.0f} %"


def _num(v: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(v) else f"{v:+.{digits}f}"


def _p(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}"


def markdown(a: Analysis) -> list[str]:
    """The section's lines: the effects table, one plain line per method and arm, the ANOVA table."""
    lines = [f"Each arm against the same method's {REFERENCE} arm, paired by seed, pooled over the tasks where both "
             "learned (tasks as fixed blocks: the confidence interval is the within-task spread of the paired "
             f"differences); p adjusted over the methods per arm (Holm); a verdict needs adjusted p ≤ {ALPHA}. "
             "Differences in score points (×100; a lower-is-better metric's sign is flipped: + is better).", "",
             "| Method | Arm | Δ vs QKV λ=1 | 95% CI | n | p | p (Holm) | per task | λ used | trainable | "
             "step time | verdict |",
             "|---|---|---:|---|---:|---:|---:|---|---|---:|---:|---|"]
    for e in a.effects:
        per = ", ".join(f"{md_escape(t)} {v:+.2f}" for t, v in e.per_task.items())
        lam = ", ".join(f"{md_escape(t)} {v:.3g}" for t, v in e.lambdas.items() if math.isfinite(v))
        extra = f" (excludes {md_escape(', '.join(e.excluded))}: did not learn)" if e.excluded else ""
        lines.append(f"| {md_escape(e.method)} | {md_escape(e.arm)} | {_num(e.diff)} | {_num(e.ci_low)} to {_num(e.ci_high)} | {e.n} | "
                     f"{_p(e.p_value)} | {_p(e.p_holm)} | {per} | {lam} | {_pct(e.params_ratio)} | "
                     f"{e.step_text} | {e.verdict}{extra} |")
    lines += ["", "In plain words:", ""]
    for e in a.effects:
        power = (f"; this design detects ±{e.detectable:.2f} points with 80 % power"
                 if e.verdict.startswith("no detectable") and math.isfinite(e.detectable) else "")
        lines.append(f"- **{md_escape(e.method)}, {md_escape(e.arm)}**: {e.verdict} ({_num(e.diff)} points, 95% CI {_num(e.ci_low)} to "
                     f"{_num(e.ci_high)}{power}); trainable parameters {_pct(e.params_ratio)}, step time "
                     f"{e.step_text}.")
    lines.append("")
    if a.anova is None:
        lines += [f"Two-factor table: none — {a.anova_note}.", ""]
        return lines
    lines += [f"Two-factor analysis: {a.anova_note}.", "", "| Term | df | F | p |", "|---|---:|---:|---:|"]
    for r in a.anova:
        f_text = f"{r['F']:.2f}" if math.isfinite(r["F"]) else ""
        lines.append(f"| {r['term']} | {r['df']:g} | {f_text} | {_p(r['p'])} |")
    inter = a.interaction()
    if inter is not None and math.isfinite(inter["p"]):
        depends = "depends on the method" if inter["p"] <= ALPHA else "shows no detectable dependence on the method"
        lines += ["", f"The strategy's effect {depends} (method × strategy: F = {inter['F']:.2f}, "
                      f"p = {_p(inter['p'])})."]
    lines.append("")
    return lines
