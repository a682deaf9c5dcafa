"""One table model, rendered as Markdown, LaTeX (booktabs) and CSV (HTML lives in :mod:`.html`).

The layout follows Table 2 of arXiv 2410.02247 and most PEFT papers: a row per configuration, a column per task
(named with its metric), the average over tasks and the trainable parameters; each cell is the mean ± standard
deviation over seeds, scores ×100; the best value of a column (the lowest for a lower-is-better metric such as
``lm_loss``) is bold and the second underlined (ranked on the displayed, rounded values so that what looks tied is
marked tied). A cell with fewer than three seeds carries a visible dagger in every format, and a cell that did not
learn (:mod:`.learned`) a ✗ with a legend; an Avg. over such a cell carries the ✗ too.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..tasks.metrics import METRIC_TITLES
from ..vocab import higher_is_better
from .collect import SPLIT_TITLES, Collection, Row
from .compare import NO_PAIRS, Comparison
from .learned import LEGEND, NOT_LEARNED
from .rows import task_title
from .stats import FEW_SEEDS

FIELD_TITLES = {"model": "Model", "method": "Method", "targets": "Targets", "rank": "Rank", "lr_ratio": "λ",
                "role_lr": "Role ratios", "lr": "LR"}
FEW = "†"
NOT_COMPARABLE = "‡"


@dataclass
class Score:
    """A displayed cell: statistics ×100 and its rank in the column (1 best, 2 second, 0 other)."""

    mean: float
    std: float = math.nan
    n: int = 0
    ci_low: float = math.nan
    ci_high: float = math.nan
    rank: int = 0
    lr: float | None = None
    basis: str = ""
    run_keys: tuple[str, ...] = ()
    seeds: tuple = ()
    learned: bool | None = None  # False: the runs do not beat the trivial baseline (:mod:`.learned`)
    baseline: float = math.nan  # ×100, as the mean

    @property
    def few(self) -> bool:
        return 0 < self.n < FEW_SEEDS


@dataclass
class TableRow:
    row: Row
    labels: list[str]
    scores: list[Score | None]
    avg: Score | None
    params: tuple[float, float]


@dataclass
class Table:
    label_fields: list[str]
    label_headers: list[str]
    tasks: list[str]
    task_headers: list[str]
    rows: list[TableRow]
    caption: str
    notes: list[str] = field(default_factory=list)
    digits: int = 1
    ci: bool = False  # Markdown cells also show the 95 % CI over seeds: "mean ± std [low, high]"


def fmt_value(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_params(lo: float, hi: float) -> str:
    def one(n: float) -> str:
        if not math.isfinite(n):
            return "–"
        for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if n >= div:
                return f"{n / div:.3g}{unit}"
        return f"{n:.0f}"

    return one(lo) if one(lo) == one(hi) else f"{one(lo)}–{one(hi)}"


def _rank(scores: Sequence[Score | None], digits: int, higher: bool) -> None:
    """Mark the best (1) and second-best (2) displayed values of a column (the largest, or the smallest where
    ``higher`` is False: a lower-is-better metric); ties share the mark."""
    vals = sorted({round(s.mean, digits) for s in scores if s is not None and math.isfinite(s.mean)}, reverse=higher)
    for s in scores:
        if s is not None and math.isfinite(s.mean):
            v = round(s.mean, digits)
            s.rank = 1 if v == vals[0] else 2 if len(vals) > 1 and v == vals[1] else 0


def build_table(col: Collection, digits: int = 1, ci: bool = False) -> Table:
    tasks = col.tasks
    headers = []
    for t in tasks:
        m = col.metrics[t]
        headers.append(f"{task_title(t)} ({METRIC_TITLES.get(m, m)})" + ("" if col.comparable[t] else NOT_COMPARABLE))
    rows = []
    for r in col.rows:
        scores: list[Score | None] = []
        for t in tasks:
            c = r.cells.get(t)
            if c is None:
                scores.append(None)
                continue
            s = c.summary
            scores.append(Score(100 * s.mean, 100 * s.std, s.n, 100 * s.ci_low, 100 * s.ci_high, lr=c.lr,
                                basis=c.basis, run_keys=tuple(x["run_key"] for x in c.runs),
                                seeds=tuple(k[0] for k in c.scores), learned=c.learned, baseline=100 * c.baseline))
        full = all(s is not None for s in scores)
        avg = Score(sum(s.mean for s in scores) / len(scores), n=min(s.n for s in scores),
                    learned=False if any(s.learned is False for s in scores) else None) if full and scores else None
        costs = [r.cells[t].cost("trainable_params") for t in tasks if t in r.cells]
        costs = [c for c in costs if math.isfinite(c)] or [math.nan]
        rows.append(TableRow(r, [fmt_value(r.fields.get(k)) for k in col.label_fields], scores, avg,
                             (min(costs), max(costs))))
    higher = [higher_is_better(col.metrics[t]) for t in tasks]
    for j in range(len(tasks)):
        _rank([tr.scores[j] for tr in rows], digits, higher[j])
    if len(set(higher)) == 1:  # an average over metrics of opposite directions has no best
        _rank([tr.avg for tr in rows], digits, higher[0])
    spread = "mean ± standard deviation [95 % t confidence interval]" if ci else "mean ± standard deviation"
    caption = (f"Scores ×100 on the {SPLIT_TITLES[col.split]}, {spread} over seeds; best per column in "
               f"bold, second underlined; Avg. is the mean over tasks of the cell means; Params are trainable "
               f"parameters (adapters and classification head).")
    notes = []
    if any(s is not None and s.few for tr in rows for s in [*tr.scores]):
        notes.append(f"{FEW} fewer than {FEW_SEEDS} seeds in this cell: its spread is not reliable.")
    if any(s is not None and s.learned is False for tr in rows for s in [*tr.scores, tr.avg]):
        notes.append(LEGEND + f" An Avg. marked {NOT_LEARNED} averages such a cell.")
    if not all(col.comparable.values()):
        notes.append(f"{NOT_COMPARABLE} not evaluated on the official dev split (a sample); not comparable to "
                     f"published numbers.")
    for name, chosen_by in sorted(col.searches.items()):
        same = chosen_by.split("/", 1)[0] == col.split
        notes.append(f"Configurations tuned by the search {name!r}: each row's hyperparameters were chosen on "
                     f"{chosen_by}, and its seeded re-runs are scored here on the {SPLIT_TITLES[col.split]}"
                     + (" — ⚠ the split that chose them: optimistic." if same else ".")
                     + (f" The search's {col.trials_left_out} trial runs (tuning) are not rows." if col.trials_left_out
                        else ""))
    if col.select_lr:
        bases = sorted({s.basis for tr in rows for s in tr.scores if s is not None})
        notes.append("Learning rate selected per cell by the best mean score on: " + ", ".join(bases) + ".")
    if col.common:
        notes.append("Shared settings: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(col.common.items())
                                                      if v is not None and v != {}) + ".")
    for method, settings in col.method_settings.items():
        notes.append(f"{method} settings: " + ", ".join(f"{k}={fmt_value(v)}" for k, v in settings.items()) + ".")
    for k, by_task in sorted(col.per_task.items()):
        notes.append(f"Per-task {k}: " + ", ".join(f"{task_title(t)}={fmt_value(v)}" for t, v in by_task.items()) + ".")
    return Table(list(col.label_fields), [FIELD_TITLES.get(k, k) for k in col.label_fields], list(tasks), headers,
                 rows, caption, notes, digits, ci)


# ---------------------------------------------------------------------------------------------------- Markdown
_MD_SPECIAL = set("\\`*_{}[]<>|~&")


def md_escape(s: object) -> str:
    """Backslash-escape Markdown punctuation so config strings cannot format or inject HTML."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(s)).replace("\r", " ").replace("\n", " ")


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def md_score(s: Score | None, digits: int, ci: bool = False) -> str:
    if s is None:
        return "–"
    m = _num(s.mean, digits)
    m = f"**{m}**" if s.rank == 1 else f"<u>{m}</u>" if s.rank == 2 else m
    std = f" ± {_num(s.std, digits)}" if math.isfinite(s.std) else ""
    interval = f" [{_num(s.ci_low, digits)}, {_num(s.ci_high, digits)}]" if ci and math.isfinite(s.ci_low) and \
        math.isfinite(s.ci_high) else ""
    return m + std + interval + (f" {FEW}" if s.few else "") + (f" {NOT_LEARNED}" if s.learned is False else "")


def markdown(t: Table) -> str:
    head = [*map(md_escape, t.label_headers), *map(md_escape, t.task_headers), "Avg.", "Params"]
    align = ["---"] * len(t.label_headers) + ["---:"] * (len(t.tasks) + 2)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for tr in t.rows:
        cells = [*map(md_escape, tr.labels), *(md_score(s, t.digits, t.ci) for s in tr.scores),
                 md_score(tr.avg, t.digits, t.ci), fmt_params(*tr.params)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def md_comparisons(comps: Sequence[Comparison], digits: int = 2) -> str:
    if not comps:
        return f"_{NO_PAIRS}--compare A B)._"
    test = "paired t-test" if comps[0].result.test == "t" else "Wilcoxon signed-rank"
    lines = [f"| A | B | Task | n | mean A−B (×100) | 95% CI | p ({test}) | p (Holm, {len(comps)} tests) | d_z | "
             f"detectable ({DETECTABLE}) | |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in comps:
        r = c.result
        warn = " ".join(x for x in (f"⚠ n < {FEW_SEEDS}" if r.few else "", f"{NOT_LEARNED} {c.caveat}" if c.caveat
                                    else "") if x)
        lines.append(f"| {md_escape(c.a.label)} | {md_escape(c.b.label)} | {md_escape(task_title(c.task))} | {r.n} | "
                     f"{_num(100 * r.mean_diff, digits)} | {ci_text(r, digits)} | {p_text(r.p_value)} | "
                     f"{p_text(r.p_holm)} | {_num(r.d_z, 2)} | {detectable_text(r, digits)} | {warn} |")
    return "\n".join(lines)


# the smallest true difference a comparison's design detects (stats.detectable): what "no difference" can rule out
DETECTABLE = "80 % power"


def detectable_text(r, digits: int = 2) -> str:
    v = r.detectable
    return f"±{_num(100 * v, digits)}" if math.isfinite(v) else "–"


COST_HEADERS = ("Configuration", "Runs", "Params", "Median step (s)", "Peak memory (MB)", "Wall per run (s)",
                "Wall, all runs (h)", "Tokens/s", "MFU (%)", "CPU share (%)")


# A peak-memory cell whose runs mix fresh processes with processes that had run earlier runs (their peak included).
MIXED_PROCESSES = " ⚠ mixed: fresh and reused processes"
# A step-time cell whose runs had under 80 % of their cores (median): measured beside other work.
SHARED_CPU = " ⚠ CPU shared"


def cost_cells(c) -> list[str]:
    """A cost row's cells as text, in :data:`COST_HEADERS` order."""
    return [str(c.label), str(c.runs), fmt_params(c.params_min, c.params_max) if math.isfinite(c.params_min) else "–",
            _g3(c.median_step_s) + (SHARED_CPU if c.shared_cpu else ""),
            _g3(c.peak_memory_mb, 0) + (MIXED_PROCESSES if c.mixed_processes else ""),
            _g3(c.wall_per_run_s, 1), _g3(c.wall_s / 3600, 2), _g3(c.tokens_per_s, 0), _g3(100 * c.mfu, 1),
            _g3(100 * c.cpu_share, 0)]


def _g3(v: float, digits: int = 3) -> str:
    return f"{v:,.{digits}f}" if math.isfinite(v) else "–"


def md_costs(costs) -> str:
    lines = ["| " + " | ".join(COST_HEADERS) + " |", "|---|" + "---:|" * (len(COST_HEADERS) - 1)]
    lines += ["| " + " | ".join(md_escape(x) for x in cost_cells(c)) + " |" for c in costs]
    return "\n".join(lines)


def spent_text(s) -> str:
    """The compute a store holds, in one sentence."""
    if s is None or not s.runs:
        return "No runs in the store."
    statuses = ", ".join(f"{n} {k}" for k, n in sorted(s.by_status.items()))
    when = f"; from {s.first} to {s.last}" if s.first else ""
    return (f"Compute in the store (every run, whatever its status, every learning rate): {s.runs} runs ({statuses}), "
            f"{s.wall_s / 3600:.2f} h of wall time summed over runs ({s.train_s / 3600:.2f} h training), "
            f"{s.steps:,} optimizer steps{when}. Runs that shared a CPU each count their own wall time.")


def ci_text(r, digits: int = 2) -> str:
    """The 95% confidence interval of a comparison's mean difference, ×100: "[-1.20, 0.40]" (– without one)."""
    if not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return "–"
    return f"[{_num(100 * r.ci_low, digits)}, {_num(100 * r.ci_high, digits)}]"


def p_text(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ---------------------------------------------------------------------------------------------------- LaTeX
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}", "λ": r"$\lambda$", "ρ": r"$\rho$", "±": r"$\pm$",
        "†": r"$^\dagger$", "‡": r"$^\ddagger$", "–": "--", "×": r"$\times$", "−": "-", "⚠": "(!)", "✗": r"$^\times$"}


def tex_escape(s: object) -> str:
    """Escape LaTeX's special characters (and the few Unicode symbols this report uses) in a config string."""
    return "".join(_TEX.get(ch, ch) for ch in str(s)).replace("\r", " ").replace("\n", " ")


def tex_score(s: Score | None, digits: int) -> str:
    if s is None:
        return "--"
    m = _num(s.mean, digits)
    m = rf"\textbf{{{m}}}" if s.rank == 1 else rf"\underline{{{m}}}" if s.rank == 2 else m
    std = rf"{{\scriptsize $\pm${_num(s.std, digits)}}}" if math.isfinite(s.std) else ""
    return m + std + (r"$^\dagger$" if s.few else "") + (r"$^\times$" if s.learned is False else "")


def latex(t: Table, comps: Sequence[Comparison] = (), label: str = "tab:efficientft") -> str:
    cols = "l" * len(t.label_headers) + "r" * (len(t.tasks) + 2)
    head = [*map(tex_escape, t.label_headers), *map(tex_escape, t.task_headers), "Avg.", "Params"]
    out = [r"% Generated by `eft report`; needs \usepackage{booktabs,graphicx}.", r"\begin{table}[t]", r"\centering",
           r"\caption{" + tex_escape(t.caption) + "}", r"\label{" + label + "}", r"\resizebox{\linewidth}{!}{%",
           r"\begin{tabular}{" + cols + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for tr in t.rows:
        cells = [*map(tex_escape, tr.labels), *(tex_score(s, t.digits) for s in tr.scores), tex_score(tr.avg, t.digits),
                 tex_escape(fmt_params(*tr.params))]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}}"]
    if t.notes:
        out.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(tex_escape(n) for n in t.notes) + "}")
    out.append(r"\end{table}")
    if comps:
        out += ["", r"\begin{table}[t]", r"\centering",
                r"\caption{Paired comparisons over matched seeds (A$-$B, scores $\times$100).}",
                r"\begin{tabular}{lllrrrrr}", r"\toprule",
                r"A & B & Task & $n$ & $\Delta$ & $p$ & $p_\mathrm{Holm}$ & $d_z$ \\", r"\midrule"]
        for c in comps:
            r = c.result
            few = r"$^\dagger$" if r.few else ""
            out.append(" & ".join([tex_escape(c.a.label), tex_escape(c.b.label), tex_escape(task_title(c.task)),
                                   f"{r.n}{few}", _num(100 * r.mean_diff, 2), tex_escape(p_text(r.p_value)),
                                   tex_escape(p_text(r.p_holm)), tex_escape(_num(r.d_z, 2))]) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if any(c.result.few for c in comps):
            out.append(r"\par\smallskip{\footnotesize $^\dagger$ fewer than " + str(FEW_SEEDS) +
                       r" matched seeds: the test has little power.}")
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------- CSV
def _cell_text(v: object) -> object:
    """Strings that a spreadsheet would run as a formula get a leading apostrophe (OWASP CSV injection); numbers
    written as text ("-1.5") stay numbers."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(v)
        except ValueError:
            return "'" + v
    return v


def _csv(lines: Sequence[Sequence[object]]) -> str:
    """CSV text with every field, header included, through :func:`_cell_text`: one place, no unguarded cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for line in lines:
        w.writerow([_cell_text(v) for v in line])
    return buf.getvalue()


def csv_table(t: Table, col: Collection) -> str:
    """The table as numbers: per task mean, std, n and 95% CI (×100), plus costs; one line per row."""
    head = list(t.label_fields)
    for task in t.tasks:
        base = f"{task}_{col.metrics[task]}_x100"
        head += [f"{base}_mean", f"{base}_std", f"{task}_n", f"{base}_ci95_low", f"{base}_ci95_high"]
        if col.select_lr:
            head += [f"{task}_lr", f"{task}_lr_selected_on"]
    head += ["avg_x100", "trainable_params", "peak_memory_mb", "wall_s", "seeds_min", "tokens_per_s", "mfu"]
    lines: list[list[object]] = [head]
    for tr in t.rows:
        line: list[object] = ["" if tr.row.fields.get(k) is None else fmt_value(tr.row.fields.get(k))
                              for k in t.label_fields]
        for s in tr.scores:
            if s is None:
                line += [""] * (5 + 2 * bool(col.select_lr))
                continue
            line += [_g(s.mean), _g(s.std), s.n, _g(s.ci_low), _g(s.ci_high)]
            if col.select_lr:
                line += [_g(s.lr), s.basis]
        ns = [s.n for s in tr.scores if s is not None]
        line += [_g(tr.avg.mean) if tr.avg else "", _g(tr.row.cost("trainable_params", t.tasks)),
                 _g(tr.row.cost("peak_memory_mb", t.tasks)), _g(tr.row.cost("wall_s", t.tasks)), min(ns) if ns else 0,
                 _g(tr.row.cost("tokens_per_s", t.tasks)), _g(tr.row.cost("mfu", t.tasks))]
        lines.append(line)
    return _csv(lines)


def csv_comparisons(comps: Sequence[Comparison]) -> str:
    lines: list[list[object]] = [["a", "b", "task", "n", "seeds", "mean_diff_x100", "std_diff_x100", "ci_low_x100",
                                  "ci_high_x100", "p_value", "p_holm", "test", "d_z", "detectable_x100", "warning"]]
    for c in comps:
        r = c.result
        lines.append([c.a.label, c.b.label, c.task, r.n, " ".join(map(str, r.seeds)), _g(100 * r.mean_diff),
                      _g(100 * r.std_diff), _g(100 * r.ci_low), _g(100 * r.ci_high), _g(r.p_value), _g(r.p_holm), r.test,
                      _g(r.d_z), _g(100 * r.detectable),
                      "; ".join(x for x in (f"n < {FEW_SEEDS}" if r.few else "", c.caveat) if x)])
    return _csv(lines)


def _g(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else repr(float(v))
