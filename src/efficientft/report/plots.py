"""Figures of a report, each written as PNG and SVG with matplotlib's object API (no pyplot, no global state).

- score vs trainable parameters, peak memory and wall time, one panel per task (and the average), with the Pareto
  frontier (lowest cost for the best score; :func:`~.stats.pareto_front`) — the cost/benefit view of PEFT papers
  (e.g. PEFT's ``method_comparison``);
- score vs λ per task, one line per configuration family (everything but λ equal), as in arXiv 2410.02247 Fig. 3;
- training loss and evaluation score per step, mean over seeds, one figure per task.

Error bars are one standard deviation over seeds. Names from configs and data (row labels, task names) are drawn as
literal text (:func:`_literal`): a ``$`` in a name is a dollar sign, not the start of math.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import EngFormatter, FixedLocator, NullFormatter, NullLocator

from ..store import Store
from ..tasks.metrics import METRIC_TITLES
from ..vocab import higher_is_better
from .collect import Collection, Row
from .learned import baseline_of
from .rows import row_label, task_title
from .stats import Summary, pareto_front, summarize
from .values import number

COSTS = {  # stem: (cost field, axis label, log scale)
    "score_vs_params": ("trainable_params", "trainable parameters", True),
    "score_vs_memory": ("peak_memory_mb", "peak memory (MB)", False),
    "score_vs_time": ("wall_s", "wall time per run (s)", True),
}
_MARKERS = "osD^vP*Xph<>"


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "marker": _MARKERS[(i // 10) % len(_MARKERS)]}


def _literal(*texts: Text) -> None:
    """Draw data strings as they are: mathtext would read ``a$b$`` as math (and abort the figure on a bad
    expression such as ``$\\frac{$``), and usetex would hand the name to LaTeX."""
    for t in texts:
        t.set_usetex(False)
        t.set_parse_math(False)


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    return paths


def _panels(n: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list]:
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend(fig: Figure, rows: Sequence[Row]) -> None:
    handles = [fig.axes[0].plot([], [], linestyle="none", **_style(i))[0] for i in range(len(rows))]
    leg = fig.legend(handles, [r.label for r in rows], loc="outside lower center", ncols=min(3, max(1, len(rows))),
                     fontsize="small", frameon=False)
    _literal(*leg.get_texts())


def _half(s: Summary) -> float:
    """The half-width of a summary's 95 % confidence interval, ×100 (NaN with fewer than two values)."""
    return 100 * (s.ci_high - s.ci_low) / 2 if s.n > 1 else math.nan


def task_baseline(col: Collection, task: str, split: str | None = None) -> float:
    """The trivial baseline of ``task``'s score (×100): the mean over its runs of what each recorded for the
    collection's split (or ``split``) and metric; NaN where none recorded one."""
    key = f"{split or col.split}/{col.metrics[task]}"
    vals = [b for r in col.rows if task in r.cells for run in r.cells[task].runs
            if math.isfinite(b := baseline_of(run, key))]
    return 100 * sum(vals) / len(vals) if vals else math.nan


def draw_baseline(ax: Any, y: float) -> None:
    """The trivial baseline as a dashed horizontal line, labelled on the plot (a flat line at 0 is the majority
    class, not a score)."""
    if not math.isfinite(y):
        return
    ax.axhline(y, color="0.35", linestyle="--", linewidth=1, label=f"trivial baseline ({y:.1f})", zorder=0)
    ax.annotate(f"baseline {y:.1f}", (0.01, y), xycoords=("axes fraction", "data"), xytext=(0, 2),
                textcoords="offset points", fontsize="x-small", color="0.35", va="bottom")


def _targets(col: Collection) -> list[tuple[str, str, Callable[[Row], tuple[float, float]]]]:
    """(key, title, row → (mean, half-width of the 95 % CI over seeds) ×100) per task, plus the average over tasks
    when there are several (its interval: over the seeds every task has, of each seed's mean over the tasks)."""
    out = []
    for t in col.tasks:
        def f(r: Row, t: str = t) -> tuple[float, float]:
            c = r.cells.get(t)
            return (100 * c.summary.mean, _half(c.summary)) if c else (math.nan, math.nan)

        m = col.metrics[t]
        out.append((t, f"{task_title(t)} ({METRIC_TITLES.get(m, m)}, {col.split})", f))
    if len(col.tasks) > 1:
        def avg(r: Row) -> tuple[float, float]:
            if not all(t in r.cells for t in col.tasks):
                return (math.nan, math.nan)
            mean = 100 * sum(r.cells[t].summary.mean for t in col.tasks) / len(col.tasks)
            common = set.intersection(*(set(r.cells[t].scores) for t in col.tasks))
            per_seed = [sum(r.cells[t].scores[rep] for t in col.tasks) / len(col.tasks) for rep in common]
            return (mean, _half(summarize(per_seed)))

        out.append(("avg", "Average over tasks", avg))
    return out


def score_vs_cost(col: Collection, out: Path, stem: str) -> list[Path]:
    cost, xlabel, log = COSTS[stem]
    targets = _targets(col)
    fig, axes = _panels(len(targets))
    for ax, (key, title, score) in zip(axes, targets, strict=True):
        draw_baseline(ax, _target_baseline(col, key))
        pts = []
        for i, r in enumerate(col.rows):
            x = r.cost(cost, col.tasks) if key == "avg" else (r.cells[key].cost(cost) if key in r.cells else math.nan)
            y, e = score(r)
            pts.append((x, y))
            if math.isfinite(x) and math.isfinite(y):
                ax.errorbar([x], [y], yerr=[e] if math.isfinite(e) else None, linestyle="none", capsize=3,
                            markersize=6, **_style(i))
        higher = all(higher_is_better(col.metrics[t]) for t in (col.tasks if key == "avg" else [key]))
        front = pareto_front(pts if higher else [(x, -y) for x, y in pts])  # the front wants higher-is-better
        if front:
            xs, ys = [pts[i][0] for i in front], [pts[i][1] for i in front]
            ax.step(xs, ys, where="post", color="0.4", linestyle="--", linewidth=1, marker="o", markersize=12,
                    markerfacecolor="none", markeredgecolor="0.4", label="Pareto frontier", zorder=0)
            ax.legend(fontsize="x-small", loc="lower right")
        xs_ok = [p[0] for p in pts if math.isfinite(p[0]) and p[0] > 0]
        if log and xs_ok:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.xaxis.set_minor_formatter(EngFormatter(sep="") if max(xs_ok) < 10 * min(xs_ok) else NullFormatter())
        _literal(ax.set_title(title, fontsize="medium"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("score ×100 (bars: 95 % CI over seeds)")
        ax.grid(alpha=0.3)
    _legend(fig, col.rows)
    return _save(fig, out, stem)


def score_vs_lambda(col: Collection, out: Path) -> list[Path]:
    """One line per family of rows that differ only in λ; families with a single λ are drawn as points."""
    families: dict[str, list[Row]] = defaultdict(list)
    for r in col.rows:
        if not _lam(r) > 0:  # no usable λ (stored text, or not on a log axis): not on this plot
            continue
        families[" ".join(f"{k}={v}" for k, v in sorted(r.fields.items()) if k != "lr_ratio")].append(r)
    targets = [t for t in _targets(col)]
    fig, axes = _panels(len(targets))
    for ax, (key, title, score) in zip(axes, targets, strict=True):
        draw_baseline(ax, _target_baseline(col, key))
        for i, rows in enumerate(families.values()):
            rows = sorted(rows, key=_lam)
            xs = [_lam(r) for r in rows]
            ys, es = zip(*(score(r) for r in rows), strict=True)
            ok = [j for j in range(len(xs)) if math.isfinite(ys[j])]
            if ok:
                ax.errorbar([xs[j] for j in ok], [ys[j] for j in ok],
                            yerr=[es[j] if math.isfinite(es[j]) else 0 for j in ok], capsize=3, **_style(i))
        ax.set_xscale("log", base=2)
        lams = sorted({_lam(r) for rows in families.values() for r in rows})
        ax.xaxis.set_major_locator(FixedLocator(lams))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        _literal(ax.set_title(title, fontsize="medium"))
        ax.set_xlabel("λ (learning-rate ratio of W_v)")
        ax.set_ylabel("score ×100 (bars: 95 % CI over seeds)")
        ax.grid(alpha=0.3)
    shown = [k for k in col.label_fields if k != "lr_ratio"]
    labels = [row_label(rows[0].fields, shown) for rows in families.values()]
    handles = [axes[0].plot([], [], **_style(i))[0] for i in range(len(families))]
    leg = fig.legend(handles, labels, loc="outside lower center", ncols=min(3, max(1, len(labels))),
                     fontsize="small", frameon=False)
    _literal(*leg.get_texts())
    return _save(fig, out, "score_vs_lambda")


def _target_baseline(col: Collection, key: str) -> float:
    """A panel's baseline: its task's, or for the average over tasks the mean of the tasks' baselines."""
    if key != "avg":
        return task_baseline(col, key)
    return sum(task_baseline(col, t) for t in col.tasks) / len(col.tasks)


def _lam(r: Row) -> float:
    """A row's λ as a number (1 when the row has none; NaN when it is not a number)."""
    v = r.fields.get("lr_ratio")
    return number(1.0 if v is None else v)


def _mean_curve(store: Store, keys: Sequence[str], kind: str, name: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for k in keys:
        for kd, step, n, v in store.curves(k):
            if kd == kind and n == name and math.isfinite(number(v)):
                by_step[step].append(number(v))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def curves(col: Collection, store: Store, out: Path) -> list[Path]:
    """Per task: training loss and the evaluation score (dev, main metric) per step, mean over each cell's seeds."""
    paths: list[Path] = []
    for t in col.tasks:
        rows = [r for r in col.rows if t in r.cells]
        fig, (ax_l, ax_e) = _panels(2, width=5.0)
        metric = col.metrics[t]
        for i, r in enumerate(col.rows):
            if t not in r.cells:
                continue
            keys = [x["run_key"] for x in r.cells[t].runs]
            xs, ys = _mean_curve(store, keys, "train", "loss")
            if xs:
                ax_l.plot(xs, ys, color=_style(i)["color"], linewidth=1)
            xs, ys = _mean_curve(store, keys, "eval", f"dev/{metric}")
            if xs:
                ax_e.plot(xs, [100 * y for y in ys], **_style(i), markersize=4)
        _literal(ax_l.set_title(f"{task_title(t)}: training loss (mean over seeds)", fontsize="medium"))
        ax_l.set_xlabel("step")
        ax_l.set_ylabel("loss")
        draw_baseline(ax_e, task_baseline(col, t, "dev"))
        _literal(ax_e.set_title(f"{task_title(t)}: dev {metric} ×100", fontsize="medium"))
        ax_e.set_xlabel("step")
        ax_e.set_ylabel("score ×100")
        for ax in (ax_l, ax_e):
            ax.grid(alpha=0.3)
        idx = [i for i, r in enumerate(col.rows) if t in r.cells]
        handles = [ax_e.plot([], [], **_style(i))[0] for i in idx]
        leg = fig.legend(handles, [r.label for r in rows], loc="outside lower center",
                         ncols=min(3, max(1, len(rows))), fontsize="small", frameon=False)
        _literal(*leg.get_texts())
        paths += _save(fig, out, f"curves_{_safe(t)}")
    return paths


def _safe(name: str) -> str:
    """A file-name-safe version of a task name (names come from data: never trust them as paths). A name that had
    to change gets a digest of itself, so ``a.b`` and ``a_b`` do not write (and embed) one file twice."""
    s = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    if s != name or not s:
        s = f"{s[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return s


def all_plots(col: Collection, store: Store, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for stem in COSTS:
        paths += score_vs_cost(col, out, stem)
    paths += score_vs_lambda(col, out)
    paths += curves(col, store, out)
    return paths
