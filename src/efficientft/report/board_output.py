"""The leaderboard as Markdown, CSV and one self-contained HTML page (the report's escaping and CSP: :mod:`.html`)."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from ..outputs import check_output_dir
from ..tasks.metrics import METRIC_TITLES
from . import html as h
from .collect import SPLIT_TITLES
from .leaderboard import BOARD_COSTS, Entry, Leaderboard, TaskBoard
from .rows import task_title
from .tables import SHARED_CPU, _csv, fmt_params, md_escape, p_text
from .values import score_scale

BOARD_FORMATS = ("md", "html", "csv")
ENTRY_HEADERS = ("#", "Entry", "Score", "95 % CI", "n", "Tied with the best", "p vs best (Holm)", "vs reference",
                 "Δ vs reference", "p vs reference (Holm)", "Learned", "Tuned (budget)")


def _f(v: float, k: float, digits: int = 2) -> str:
    return f"{k * v:.{digits}f}" if math.isfinite(v) else "–"


def _band(e: Entry) -> str:
    return "best" if e.best else "untested" if e.tied is None else "tied" if e.tied else "no"


def _learned(e: Entry) -> str:
    return "–" if e.learned is None else "learned" if e.learned else "did not learn"


def entry_cells(b: TaskBoard, e: Entry) -> list[str]:
    """One entry's row of a task's table, as text in :data:`ENTRY_HEADERS` order."""
    k = score_scale(b.metric, b.higher)
    s = e.cell.summary
    ref = e.vs_reference
    return [str(e.place), e.label, _f(s.mean, k), f"[{_f(s.ci_low, k)}, {_f(s.ci_high, k)}]", str(s.n), _band(e),
            "–" if e.vs_best is None else f"{p_text(e.vs_best.p_holm)} ({e.vs_best.kind or 'no test'})",
            e.reference or "–", "–" if ref is None else f"{ref.diff * k:+.2f}",
            "–" if ref is None else f"{p_text(ref.p_holm)} ({ref.kind or 'no test'})", _learned(e),
            e.tuning.text()]


def task_heading(b: TaskBoard) -> str:
    m = METRIC_TITLES.get(b.metric, b.metric)
    scale = "×100" if score_scale(b.metric, b.higher) == 100 else "as measured"
    return f"{task_title(b.task)} ({m}, {'higher' if b.higher else 'lower'} is better; scores {scale})"


COST_HEADERS = ("Entry", "Average rank", *(t for t, _ in BOARD_COSTS.values()))


def cost_cells(lb: Leaderboard, label: str) -> list[str]:
    c = lb.costs.get(label)
    rank = lb.ranks.mean_rank.get(label, math.nan)
    if c is None:
        return [label, _f(rank, 1), "–", "–", "–", "–"]
    return [label, _f(rank, 1), fmt_params(c.params_min, c.params_max), _f(c.peak_memory_mb, 1, 0),
            _f(c.median_step_s, 1, 4) + (SHARED_CPU if c.shared_cpu else ""), _f(c.tokens_per_s, 1, 0)]


def ranks_text(lb: Leaderboard) -> list[str]:
    r = lb.ranks
    if r.why:
        return [r.why]
    out = [f"Average rank over {len(r.tasks)} tasks ({', '.join(task_title(t) for t in r.tasks)}), 1 = best, "
           f"each task ranked in its metric's direction: "
           + "; ".join(f"{lab} {r.mean_rank[lab]:.2f}" for lab in r.labels) + "."]
    if r.unranked:
        out.append(f"Not ranked (not scored on every task): {'; '.join(r.unranked)}.")
    if r.not_learned:  # ranked as scored, but named: a rank among cells that did not learn is no claim
        cells = "; ".join(f"{lab} on {task_title(t)}" for lab, t in r.not_learned)
        out.append(f"⚠ Ranked as scored, but did not learn (no better than the trivial baseline beyond their "
                   f"noise): {cells}.")
    if math.isfinite(r.friedman_p):
        out.append(f"Friedman test: χ² = {r.friedman_stat:.3f}, p = {p_text(r.friedman_p)} "
                   f"({'the entries differ' if r.friedman_p <= lb.alpha else 'no difference shown'} at "
                   f"α = {lb.alpha:g}).")
    cd = r.critical_difference
    if math.isfinite(cd):
        ranks = list(r.mean_rank.values())
        spread = max(ranks) - min(ranks)
        out.append(f"Nemenyi critical difference at α = {lb.alpha:g}: {cd:.2f} ranks ({len(r.labels)} entries, "
                   f"{len(r.tasks)} tasks): average ranks closer than that are not distinguished"
                   + (f" — here it exceeds the whole spread of the average ranks ({spread:.2f}), so no two entries "
                      f"are told apart; it shrinks as 1/√tasks." if cd > spread else "."))
    if r.why_no_test:
        out.append(r.why_no_test)
    return out


def _intro(lb: Leaderboard) -> str:
    col = lb.collection
    return (f"Split: {SPLIT_TITLES[col.split]}. Per task: mean over seeds with its 95 % t interval; tied = not "
            f"distinguishable from the best at α = {lb.alpha:g} (paired t-test over matched seeds, else Welch; "
            f"Holm-adjusted over the task's comparisons with the best). Reference: {lb.reference} "
            f"(on the same targets, when a method name), Holm-adjusted over the task's comparisons with it.")


def markdown(lb: Leaderboard, plot_dir: Path | None = None) -> str:
    md = md_escape
    lines = ["# EfficientFT leaderboard", "", f"Store `{lb.collection.store}`.", "", md(_intro(lb)), ""]
    for b in lb.tasks:
        lines += [f"## {md(task_heading(b))}", "", "| " + " | ".join(ENTRY_HEADERS) + " |",
                  "|---:|---|---:|---:|---:|" + "---|" * 7]
        lines += ["| " + " | ".join(md(x) for x in entry_cells(b, e)) + " |" for e in b.entries]
        lines += [""] + [f"Non-dominated (score against {BOARD_COSTS[c][0]}): {md(', '.join(labs) or '–')}.  "
                         for c, labs in b.pareto.items()] + [""]
    lines += ["## Across tasks", "", *(md(t) + "  " for t in ranks_text(lb)), "",
              "| " + " | ".join(COST_HEADERS) + " |", "|---|" + "---:|" * (len(COST_HEADERS) - 1)]
    order = lb.ranks.labels + [r.label for r in lb.collection.rows if r.label not in lb.ranks.labels]
    lines += ["| " + " | ".join(md(x) for x in cost_cells(lb, lab)) + " |" for lab in order]
    if lb.plots and plot_dir is not None:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(plot_dir).as_posix()})" for p in lb.plots]
    return "\n".join(lines) + "\n"


CSV_HEADERS = ("task", "metric", "higher_is_better", "place", "entry", "method", "targets", "lr_ratio", "n", "mean",
               "ci_low", "ci_high", "best", "tied", "test_vs_best", "p_vs_best", "p_vs_best_holm", "reference",
               "test_vs_reference", "diff_vs_reference", "p_vs_reference", "p_vs_reference_holm", "learned",
               "search", "tuned", "trials", "trial_steps", "mean_rank", *BOARD_COSTS)


def csv_text(lb: Leaderboard) -> str:
    """One line per (task, entry); scores as stored (not ×100)."""
    lines: list[Sequence[object]] = [CSV_HEADERS]
    for b in lb.tasks:
        for e in b.entries:
            s, tb, tr, f = e.cell.summary, e.vs_best, e.vs_reference, e.row.fields
            c = lb.costs.get(e.label)
            costs = [getattr(c, a) if c else "" for a in ("params_min", "peak_memory_mb", "median_step_s",
                                                          "tokens_per_s")]
            lines.append([b.task, b.metric, b.higher, e.place, e.label, f.get("method"), f.get("targets"),
                          f.get("lr_ratio"), s.n, s.mean, s.ci_low, s.ci_high, e.best, "" if e.tied is None else e.tied,
                          tb.kind if tb else "", tb.p if tb else "", tb.p_holm if tb else "", e.reference or "",
                          tr.kind if tr else "", tr.diff if tr else "", tr.p if tr else "", tr.p_holm if tr else "",
                          "" if e.learned is None else e.learned, e.tuning.search or "",
                          "; ".join(f"{a}={v}" for a, v in e.tuning.tuned.items()), e.tuning.trials,
                          e.tuning.steps, lb.ranks.mean_rank.get(e.label, ""), *costs])
    return _csv([[("" if isinstance(v, float) and not math.isfinite(v) else v) for v in line] for line in lines])


def page(lb: Leaderboard) -> str:
    """The leaderboard as one HTML document: the tasks' tables (sortable; tied rows shaded), ranks, costs, plots."""
    script_hash = base64.b64encode(hashlib.sha256(h._JS.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    blocks = []
    for i, b in enumerate(lb.tasks):
        rows = [h.tag("tr", *[h.tag("td", x, class_="l" if j in (1, 5, 7, 10, 11) else None)
                              for j, x in enumerate(entry_cells(b, e))], class_=_band(e))
                for e in b.entries]
        blocks += [h.tag("h2", task_heading(b)),
                   h._table(f"task-{i}", [(x, j in (1, 5, 7, 10, 11)) for j, x in enumerate(ENTRY_HEADERS)], rows),
                   *[h.tag("p", f"Non-dominated (score against {BOARD_COSTS[c][0]}): {', '.join(labs) or '–'}.",
                           class_="note") for c, labs in b.pareto.items()]]
    order = lb.ranks.labels + [r.label for r in lb.collection.rows if r.label not in lb.ranks.labels]
    cost_rows = [h.tag("tr", *[h.tag("td", x, class_="l" if j == 0 else None)
                               for j, x in enumerate(cost_cells(lb, lab))]) for lab in order]
    blocks += [h.tag("h2", "Across tasks", id="ranks"), *[h.tag("p", t, class_="note") for t in ranks_text(lb)],
               h._table("board-costs", [(x, j == 0) for j, x in enumerate(COST_HEADERS)], cost_rows),
               h.tag("h2", "Plots", id="plots")]
    figs = h.join([h._figure(p) for p in lb.plots]) or h.tag("p", "No plots (--no-plots).", class_="note")
    css = h._CSS + "tr.best td,tr.tied td{background:#eef7ee}tr.best td{font-weight:700}\n"
    title = "EfficientFT leaderboard"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{h.void("meta", http_equiv="Content-Security-Policy", content=csp)}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
<h1>{title}</h1>
<p class="note">Store <code>{h.esc(lb.collection.store)}</code>. {h.esc(_intro(lb))} Shaded rows: the best and the
entries tied with it. Click a header to sort.</p>
{h.join(blocks)}
{figs}
<script>{h._JS}</script>
</body></html>
"""


def write(lb: Leaderboard, out: Path, formats: Sequence[str] = BOARD_FORMATS, plots: bool = True) -> list[Path]:
    """Write ``leaderboard.md``, ``.csv``, ``.html`` (and ``plots/``) into ``out``; returns the files."""
    check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if plots:
        from .board_plots import board_plots

        lb.plots = board_plots(lb, out / "plots")
        files += lb.plots
    texts = {"md": lambda: markdown(lb, out), "csv": lambda: csv_text(lb), "html": lambda: page(lb)}
    for fmt in formats:
        path = out / f"leaderboard.{fmt}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(texts[fmt](), encoding="utf-8")
        tmp.replace(path)
        files.append(path)
    lb.files = files
    return files
