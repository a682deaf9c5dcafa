"""The leaderboard's figures (PNG, matplotlib's object API): score against each cost with the 95 % CI over seeds
and the non-dominated entries marked, one panel per task; and the critical-difference diagram of the average ranks
(scikit-posthocs' ``critical_difference_diagram`` over Nemenyi's pairwise p-values)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from ..tasks.metrics import METRIC_TITLES
from .leaderboard import BOARD_COSTS, Leaderboard
from .plots import _literal, _panels, _style
from .rows import task_title
from .values import score_scale


def pareto_plot(lb: Leaderboard, cost: str, out: Path) -> Path | None:
    title, _more = BOARD_COSTS[cost]
    labels = [r.label for r in lb.collection.rows]
    fig, axes = _panels(len(lb.tasks))
    drawn = False
    for ax, board in zip(axes, lb.tasks, strict=True):
        k = score_scale(board.metric, board.higher)
        front = set(board.pareto[cost])
        for e in board.entries:
            x, s = e.cell.cost(cost), e.cell.summary
            if not (math.isfinite(x) and math.isfinite(s.mean)):
                continue
            drawn = True
            err = [[k * (s.mean - s.ci_low)], [k * (s.ci_high - s.mean)]] if s.n > 1 else None
            style = _style(labels.index(e.label))
            ax.errorbar([x], [k * s.mean], yerr=err, linestyle="none", capsize=3, markersize=6, **style)
            if e.label in front:
                ax.plot([x], [k * s.mean], linestyle="none", marker="o", markersize=14, markerfacecolor="none",
                        markeredgecolor="black")
        if cost == "trainable_params":
            ax.set_xscale("log")
        m = METRIC_TITLES.get(board.metric, board.metric)
        ax.set_title(f"{task_title(board.task)} ({m}, {'higher' if board.higher else 'lower'} is better)",
                     fontsize="medium")
        ax.set_xlabel(title)
        ax.set_ylabel(f"{m}{' ×100' if k == 100 else ''} (95 % CI)")
        _literal(ax.title)
    if not drawn:
        return None
    handles = [axes[0].plot([], [], linestyle="none", **_style(i))[0] for i in range(len(labels))]
    handles.append(axes[0].plot([], [], linestyle="none", marker="o", markersize=12, markerfacecolor="none",
                                markeredgecolor="black")[0])
    leg = fig.legend(handles, [*labels, "non-dominated"], loc="outside lower center",
                     ncols=min(3, len(handles)), fontsize="small", frameon=False)
    _literal(*leg.get_texts())
    path = out / f"pareto_{cost}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def cd_diagram(lb: Leaderboard, out: Path) -> Path | None:
    """The critical-difference diagram: entries on the average-rank axis, joined by a bar where Nemenyi's test does
    not tell them apart at α."""
    r = lb.ranks
    if r.nemenyi is None:
        return None
    import pandas as pd
    import scikit_posthocs as sp

    fig = Figure(figsize=(7, 0.8 + 0.35 * len(r.labels)), layout="constrained")
    ax = fig.subplots()
    drawn = sp.critical_difference_diagram(pd.Series(r.mean_rank), r.nemenyi, ax=ax, alpha=lb.alpha)
    _literal(*drawn.get("labels", []))
    ax.set_title(f"Average rank over {len(r.tasks)} tasks (1 = best); bars: not different (Nemenyi, "
                 f"α = {lb.alpha:g})", fontsize="medium")
    path = out / "critical_difference.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def board_plots(lb: Leaderboard, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [cd_diagram(lb, out)] + [pareto_plot(lb, c, out) for c in BOARD_COSTS]
    return [p for p in paths if p is not None]
