"""``eft runs``, ``eft show``, ``eft report`` and ``eft export``: what a store holds, read-only.

A read command opens its store read-only: it may sit on a read-only mount, and reading never migrates or creates
anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import api
from ..errors import ConfigError
from .flags import parse_pairs, store_arg


def add_parsers(sub) -> None:
    s = sub.add_parser("runs", help="list stored runs")
    store_arg(s)
    s.add_argument("--status", help="only runs with this status")
    s.add_argument("--json", action="store_true", help="records as JSON lines")
    s = sub.add_parser("show", help="one stored run record as JSON")
    s.add_argument("run", help="run key (or a unique prefix)")
    store_arg(s)
    _report_parser(sub)
    s = sub.add_parser("export", help="write a store's runs (flattened) and curves as CSV, Parquet or JSON lines")
    store_arg(s)
    s.add_argument("--format", choices=api.EXPORT_FORMATS, help="default: from the --out suffix")
    s.add_argument("--out", required=True, help="runs table file; curves go beside it as NAME.curves.SUFFIX")
    s.add_argument("--status", help="only runs with this status")


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV), plots and one HTML report from a store")
    store_arg(p)
    p.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    p.add_argument("--format", default=None,
                   help="comma-separated: md, html, latex, csv (default: all; with --leaderboard: md, html, csv)")
    p.add_argument("--split", default="dev", choices=("dev", "selection", "best_dev"),
                   help="which score is reported: dev, selection, or best_dev (the 'best dev score' convention)")
    p.add_argument("--tasks", help="only these tasks, in this column order (comma-separated)")
    p.add_argument("--methods", help="only these methods (comma-separated)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag")
    p.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC",
                   help="report another metric of a task, e.g. mrpc=f1 (default: the task's main metric)")
    p.add_argument("--select-lr", nargs="?", const="selection", default=False, metavar="ON",
                   choices=("selection", "dev", "best_dev"),
                   help="per configuration and task, keep the lr with the best mean score on the selection split "
                        "(ON: selection, the default; best_dev with --split best_dev is the papers' optimistic "
                        "'best dev score' convention, labelled)")
    p.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                   help="paired comparison of two rows (a row label or key=value pairs like "
                        "method=lora,targets=qv,lambda=4); repeatable; default: λ≠1 rows vs their λ=1 / qkv twins")
    p.add_argument("--test", default="t", choices=("t", "wilcoxon"), help="paired test (default: t)")
    p.add_argument("--digits", type=int, default=1, help="decimals of the ×100 scores (default: 1)")
    p.add_argument("--ci", action="store_true",
                   help="Markdown table cells also show the 95%% CI over seeds: mean ± std [low, high]")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--leaderboard", action="store_true",
                   help="a leaderboard instead: per task mean ± 95%% CI, who is tied with the best (Holm, α=0.05), "
                        "each entry against --reference; average ranks, Friedman test and critical-difference "
                        "diagram across tasks; cost beside score with Pareto plots (leaderboard.md/.csv/.html)")
    p.add_argument("--reference", metavar="ENTRY",
                   help="with --leaderboard: the reference entry, a method (on the same targets; default: lora), "
                        "an entry's label or key=value pairs (method=lora,targets=qv,lambda=1)")


def cmd_runs(a: argparse.Namespace) -> int:
    store = api.open_store(a.store, create=False)
    records = store.runs(a.status)
    if a.json:
        for r in records:
            print(json.dumps(r, sort_keys=True, default=str))
    elif not records:
        print(f"no runs in {store.path}")
    else:
        print(api.runs_table(records))
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    store = api.open_store(a.store, create=False)
    rec = store.find(a.run)
    if rec is None:
        raise ConfigError(f"no single run matches {a.run!r} in {store.path}; see `eft runs`.")
    # the record, and whether its main score beat the trivial baseline (computed here, not stored)
    print(json.dumps({**rec, "learned": api.learned(rec)}, indent=2, sort_keys=True, default=str))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    if a.leaderboard:
        if a.compare:
            raise ConfigError("--compare is the report's; the leaderboard compares each entry with its --reference "
                              "and with the best on each task.")
        return _leaderboard(a)
    if a.reference is not None:
        raise ConfigError("--reference names the leaderboard's reference entry; add --leaderboard.")
    rep, files = api.write_report(a.out, a.store, a.split, a.tasks or None, a.methods or None, a.select_lr,
                                  a.format or "md,html,latex,csv",
                                  plots=not a.no_plots, tags=parse_pairs(a.tag, "--tag"),
                                  metrics=parse_pairs(a.metric, "--metric"),
                                  pairs=[tuple(c) for c in a.compare or []], test=a.test, digits=a.digits, ci=a.ci)
    print(rep.markdown_table())
    for note in rep.table.notes:
        print(note)
    print(f"wrote {len(files)} files to {a.out}: " + ", ".join(sorted({f.name for f in files if f.parent == Path(a.out)})),
          file=sys.stderr)
    return 0


def _leaderboard(a: argparse.Namespace) -> int:
    lb = api.leaderboard(a.store, a.split, a.tasks or None, a.methods or None, a.select_lr, a.reference, a.out,
                         a.format or "md,html,csv", plots=not a.no_plots, tags=parse_pairs(a.tag, "--tag"),
                         metrics=parse_pairs(a.metric, "--metric"))
    print(api.leaderboard_markdown(lb), end="")
    print(f"wrote {len(lb.files)} files to {a.out}: " + ", ".join(sorted({f.name for f in lb.files
                                                                         if f.parent == Path(a.out)})),
          file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    written = api.export_runs(a.out, a.store, a.format, a.status)
    for path, rows in written.items():
        print(f"wrote {rows} rows to {path}", file=sys.stderr)
    return 0
