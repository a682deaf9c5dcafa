"""``eft report``: read a store, build the table, comparisons and plots, and write them in the asked formats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..outputs import check_output_dir
from ..store import Store
from . import html as html_report
from . import tables
from .collect import SPLIT_TITLES, Collection, collect
from .compare import Comparison, compare
from .cost import CostRow, Spent, cost_rows, spent
from .stats import TESTS
from .strategy import Analysis, analyse
from .strategy import markdown as strategy_markdown
from .values import order_key, show

FORMATS = ("md", "html", "latex", "csv")


@dataclass
class Report:
    collection: Collection
    table: tables.Table
    comparisons: list[Comparison]
    costs: list[CostRow] = field(default_factory=list)
    spent: Spent | None = None
    plots: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    strategy: Analysis | None = None  # methods with a qkv λ = 1 arm and others: the two-factor analysis

    def markdown_table(self) -> str:
        return tables.markdown(self.table)


def parse_formats(text: str) -> list[str]:
    out = [f.strip().lower() for f in text.split(",") if f.strip()]
    out = ["latex" if f in ("tex", "latex") else "md" if f in ("md", "markdown") else f for f in out]
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ConfigError(f"unknown report format {bad[0] if bad else text!r}; accepted: {', '.join(FORMATS)} "
                          f"(comma-separated).")
    return out


def build(store: Store, split: str = "dev", tasks: Sequence[str] | None = None,
          methods: Sequence[str] | None = None, tags: dict[str, str] | None = None,
          metrics: dict[str, str] | None = None, select_lr: bool | str = False,
          pairs: Sequence[tuple[str, str]] | None = None, test: str = "t", digits: int = 1,
          ci: bool = False) -> Report:
    if test not in TESTS:
        raise ConfigError(f"unknown test {test!r}; accepted: {', '.join(TESTS)}.")
    if not 0 <= digits <= 4:
        raise ConfigError(f"digits must be between 0 and 4, got {digits}.")
    col = collect(store, split, tasks, methods, tags, metrics, select_lr)
    return Report(col, tables.build_table(col, digits, ci), compare(col, pairs, test), cost_rows(col),
                  spent(store.runs()), strategy=analyse(col))


def markdown_document(rep: Report, plot_dir: Path | None = None) -> str:
    col, t = rep.collection, rep.table
    md = tables.md_escape
    lines = ["# EfficientFT report", "",
             f"Store {_code(col.store)}; split: {SPLIT_TITLES[col.split]}.", "", md(t.caption), "",
             rep.markdown_table(), ""]
    lines += [md(n) + "  " for n in t.notes] + [""]
    lines += ["## Paired comparisons (A − B over matched seeds)", "", tables.md_comparisons(rep.comparisons), "",
              "Detectable: the smallest true difference the comparison's seeds detect with 80 % power at α = 0.05 "
              "(two-sided t-test at the measured spread of the differences): a \"no difference\" rules out only "
              "larger ones.", ""]
    if rep.strategy is not None:
        lines += ["## The strategy per method (two factors: method × strategy)", ""]
        lines += strategy_markdown(rep.strategy)
    lines += ["## Cost", "", tables.md_costs(rep.costs), "", tables.spent_text(rep.spent), ""]  # our own words
    if col.select_lr:
        lines += ["## Selected learning rates", "", "| Configuration | Task | lr | selected on | candidates (mean) |",
                  "|---|---|---:|---|---|"]
        for r in col.rows:
            for task, c in r.cells.items():
                cands = ", ".join(f"{show(lr)}: {show(100 * m, 2)}"
                                  for lr, m in sorted(c.candidates.items(), key=lambda x: order_key(x[0])))
                lines.append(f"| {md(r.label)} | {md(task)} | {show(c.lr)} | {md(c.basis)} | {md(cands)} |")
        lines.append("")
    if rep.plots and plot_dir is not None:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(plot_dir).as_posix()})" for p in rep.plots if p.suffix == ".png"]
        lines.append("")
    if col.not_done or col.unscored or col.superseded:
        lines += ["## Runs not in the table", "", "| run | status | task | method | targets | reason |",
                  "|---|---|---|---|---|---|"]
        superseded = {r["run_key"] for r in col.superseded}
        for r in col.not_done + col.unscored + col.superseded:
            cfg = r.get("config") or {}
            why = str(r.get("error") or "").strip().splitlines()[0] if r["status"] != "done" and r.get("error") \
                else ("superseded (same seed run again; the later run counts)" if r["run_key"] in superseded
                      else "no score for this split" if r["status"] == "done" else r["status"])
            lines.append(f"| {md(str(r['run_key'])[:10])} | {md(r['status'])} | {md(cfg.get('task'))} | "
                         f"{md(cfg.get('method'))} | {md(cfg.get('targets'))} | {md(why[:160])} |")
        lines.append("")
    return "\n".join(lines)


def _code(text: str) -> str:
    """A Markdown code span of ``text`` (nothing inside a code span is markup; a backtick would end it)."""
    return "`" + text.replace("`", "'").replace("\n", " ") + "`"


def write(rep: Report, store: Store, out: Path, formats: Sequence[str] = FORMATS, plots: bool = True) -> list[Path]:
    """Write the report files into ``out``; returns their paths."""
    check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if plots:
        from .plots import all_plots
        from .search_plot import tuning_budget  # a store holding a search: best score against tuning budget

        rep.plots = all_plots(rep.collection, store, out / "plots") + tuning_budget(store.runs(), out / "plots")
        files += rep.plots
    t, col = rep.table, rep.collection
    if "md" in formats:
        files.append(_write(out / "report.md", markdown_document(rep, out)))
    if "latex" in formats:
        files.append(_write(out / "table.tex", tables.latex(t, rep.comparisons)))
    if "csv" in formats:
        files.append(_write(out / "table.csv", tables.csv_table(t, col)))
        files.append(_write(out / "comparisons.csv", tables.csv_comparisons(rep.comparisons)))
    if "html" in formats:
        files.append(_write(out / "report.html", html_report.page(t, col, rep.comparisons, rep.plots,
                                                                  examples=generated_examples(store, col),
                                                                  costs=rep.costs, spent=rep.spent)))
    rep.files = files
    return files


def generated_examples(store: Store, col: Collection, runs: int = 8, per_run: int = 3) -> list[dict]:
    """The first predictions of up to ``runs`` generation runs in the table (their store rows), for the HTML."""
    out: list[dict] = []
    for row in col.rows:
        for c in row.cells.values():
            for r in c.runs:
                if len(out) >= runs:
                    return out
                preds = store.predictions(r["run_key"])
                if preds:
                    cfg = r.get("config") or {}
                    out.append({"run_key": r["run_key"], "task": cfg.get("task"), "method": cfg.get("method"),
                                "targets": cfg.get("targets"), "rows": preds[:per_run]})
    return out


def _write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
