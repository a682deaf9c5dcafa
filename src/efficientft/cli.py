"""The ``eft`` command line: thin — it parses, builds a config, and calls the library.

Exit codes: 0 success; 1 a run failed or diverged; 2 bad input or an unusable results store (one clear message,
no traceback); 130 cancelled; 141 its output pipe was closed (``eft runs --json | head``: it stops quietly).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from .cli_flags import add_setting_flags, setting_values
from .config import DATA, ENV, MEMORY, OPTIM, TRAIN, RunConfig, load_yaml, refuse_file_only_flags
from .errors import ConfigError
from .export import FORMATS as EXPORT_FORMATS
from .hub import check_hub_repo, push_to_hub
from .outputs import check_output_dir
from .store import DEFAULT_STORE, ENV_STORE, Store, open_store

# flags that become method arguments
_METHOD_ARGS = ("rank", "alpha", "dropout")


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help=f"results store (SQLite file); default ${ENV_STORE} or {DEFAULT_STORE}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eft", description="EfficientFT: efficient fine-tuning benchmark.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="fine-tune one model on one task with one method, and store the result")
    groups = {name: r.add_argument_group(name) for name in (TRAIN, OPTIM, DATA, MEMORY, ENV)}
    add_setting_flags(r, groups)  # one flag per setting of the schema (config.RunConfig)
    # Hand-written: flags whose shape differs from their field (method_args, role_lr, custom, progress) or that are
    # no setting at all (what the command does).
    g = groups[TRAIN]
    g.add_argument("--role-lr", help="per-role learning-rate ratios, e.g. v=4,o=2 (generalises --lr-ratio)")
    g.add_argument("--rank", type=int, help="adapter rank r (LoRA family)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default: equal to the rank)")
    g.add_argument("--dropout", type=float, help="adapter dropout")
    g.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method argument (repeatable)")
    g = groups[DATA]
    g.add_argument("--train-file", help="your own training data (CSV, TSV or JSONL)")
    g.add_argument("--eval-file", help="your own evaluation data")
    g.add_argument("--text-columns", help="text column(s) of your data, comma-separated (one or two)")
    g.add_argument("--label-column", help="label column of your data (default: label)")
    g.add_argument("--regression", action="store_true", help="your labels are numbers to regress")
    g.add_argument("--kind", choices=("classification", "generation"),
                   help="generation: your files are instruction rows (instruction, input, output, answer)")
    g.add_argument("--answer", choices=("number", "choice", "text"),
                   help="generation: how answers are extracted and compared (default: text)")
    g = groups[ENV]
    g.add_argument("--config", help="YAML file of run settings; flags override it")
    g.add_argument("--push-to-hub", metavar="REPO",
                   help="upload the exported folder to this Hugging Face Hub repo (owner/name; needs --export-dir)")
    g.add_argument("--force", action="store_true", help="run again even if the store has this run done")
    g.add_argument("--json", action="store_true", help="print the stored run record as one JSON object")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _store_arg(r)

    w = sub.add_parser("sweep", help="run a suite (YAML grid of runs); finished runs are skipped, killed ones resumed")
    w.add_argument("suite", help="a shipped suite's name (quick, paper-table2, ...; see `eft suites`) or a suite file")
    w.add_argument("--workers", type=int, default=1,
                   help="local worker processes (1: in this process); they share the CPU or take one GPU each")
    w.add_argument("--executor", choices=("local", "ray"), default="local", help="local processes or a Ray cluster")
    w.add_argument("--dry-run", action="store_true", help="list the runs, what would happen to each, and the cost")
    w.add_argument("--retry-failed", action="store_true", help="run failed and diverged runs again")
    w.add_argument("--fresh-process", action="store_true",
                   help="each run in a new process (a local pool, --workers 1 too): its peak memory is then its own, "
                        "not raised by what earlier runs left in the process; costs an interpreter start per run")
    w.add_argument("--reclaim", action="store_true",
                   help="take over runs marked running by another host (a sweep that died elsewhere)")
    w.add_argument("--no-early-stopping", action="store_true",
                   help="ignore the suite's early_stopping block: run the full grid")
    w.add_argument("--ray-address", help="join this Ray cluster (e.g. auto); default: start a local Ray")
    w.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    add_setting_flags(w, only=lambda s: s.sweep_flag)  # the environment a suite leaves to the command line
    w.add_argument("--json", action="store_true", help="print the plan or the summary as JSON")
    _store_arg(w)

    sub.add_parser("suites", help="list the suites shipped with EfficientFT")
    s = sub.add_parser("suite", help="print a shipped suite (to copy and edit)")
    s_sub = s.add_subparsers(dest="suite_command", required=True, metavar="ACTION")
    s_sub.add_parser("show", help="print a shipped suite's YAML").add_argument("name", help="suite name or file")
    s = sub.add_parser("methods", help="list the registered methods and what each can do")
    s.add_argument("--json", action="store_true", help="one JSON object per method: name, summary, capabilities")
    s.add_argument("--markdown", action="store_true", help="the README's table rows of every method")
    sub.add_parser("tasks", help="list the registered tasks")
    s = sub.add_parser("runs", help="list stored runs")
    _store_arg(s)
    s.add_argument("--status", help="only runs with this status")
    s.add_argument("--json", action="store_true", help="records as JSON lines")
    s = sub.add_parser("show", help="one stored run record as JSON")
    s.add_argument("run", help="run key (or a unique prefix)")
    _store_arg(s)
    _report_parser(sub)
    s = sub.add_parser("export", help="write a store's runs (flattened) and curves as CSV, Parquet or JSON lines")
    _store_arg(s)
    s.add_argument("--format", choices=EXPORT_FORMATS, help="default: from the --out suffix")
    s.add_argument("--out", required=True, help="runs table file; curves go beside it as NAME.curves.SUFFIX")
    s.add_argument("--status", help="only runs with this status")
    return parser


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="tables (Markdown, LaTeX, CSV), plots and one HTML report from a store")
    _store_arg(p)
    p.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    p.add_argument("--format", default="md,html,latex,csv", help="comma-separated: md, html, latex, csv (default: all)")
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


def _parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ConfigError(f"{what} wants KEY=VALUE, got {part!r}.")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def config_from_args(a: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = {}
    if a.config:
        loaded = load_yaml(a.config)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{a.config}: a run config is a mapping of field: value.")
        refuse_file_only_flags(loaded, a.config)
        base.update(loaded)
    base.update(setting_values(a))  # every flag of the schema that was given
    margs = dict(base.get("method_args") or {})
    margs.update({k: getattr(a, k) for k in _METHOD_ARGS if getattr(a, k) is not None})
    margs.update(_parse_pairs(a.method_arg, "--method-arg"))
    if margs:
        base["method_args"] = margs
    if a.role_lr:
        base["role_lr"] = {k: _float(v, f"--role-lr {k}") for k, v in _parse_pairs([a.role_lr], "--role-lr").items()}
    if a.train_file or a.eval_file:
        custom = dict(base.get("custom") or {})
        custom.update({k: v for k, v in (("train", a.train_file), ("dev", a.eval_file),
                                         ("text_columns", a.text_columns), ("label_column", a.label_column))
                       if v is not None})
        if a.regression:
            custom["type"] = "regression"
        if a.kind == "generation":
            custom["type"] = "generation"
        if a.answer is not None:
            custom["answer"] = a.answer
        base["custom"] = custom
        base.setdefault("task", "custom")
    elif a.kind or a.answer:
        raise ConfigError("--kind and --answer describe your own data; give them with --train-file and --eval-file "
                          "(a registered task has its own kind: see `eft tasks`).")
    if a.no_progress or not sys.stderr.isatty():
        base["progress"] = False
    return RunConfig.from_dict(base, where=a.config or "")


def _float(v: str, what: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {v!r}.") from None


def cmd_run(a: argparse.Namespace) -> int:
    from .api import stored_done
    from .report.text import runs_table
    from .resolve import resolve, run_key
    from .train import run

    cfg = resolve(config_from_args(a), where=a.config or "")
    if a.push_to_hub is not None:
        check_hub_repo(a.push_to_hub, cfg.export_dir)
    if cfg.export_dir:
        check_output_dir(cfg.export_dir, "--export-dir")
    store = Store(a.store)
    existing = stored_done(store, cfg, a.force)
    if existing is not None:
        print(f"run {run_key(cfg)} is already done in {store.path}; showing it (use --force to run it again).",
              file=sys.stderr)
        record = existing
    else:
        record = run(cfg, store, force=a.force)
    if a.json:
        print(json.dumps(record, sort_keys=True, default=str))
    else:
        print(runs_table([record]))
        scores = record.get("scores") or {}
        if scores:
            print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items()) if isinstance(v, float)))
        print(f"stored in {store.path} as {record['run_key']}")
    if record["status"] != "done":
        return 1
    if a.push_to_hub is not None:
        url = push_to_hub(a.push_to_hub, Path(cfg.export_dir))
        print(f"uploaded {cfg.export_dir} to {url}", file=sys.stderr)
    return 0


def cmd_suites(a: argparse.Namespace) -> int:
    from .suites import SUITES

    names = SUITES.names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name.ljust(width)}  {SUITES.description(name)}")
    return 0


def cmd_suite(a: argparse.Namespace) -> int:
    from .suites import resolve_suite
    from .textfile import read_text

    sys.stdout.write(read_text(resolve_suite(a.name), "suite file"))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_store

    store = _existing_store(a.store)
    written = export_store(store, Path(a.out), a.format, a.status)
    for path, rows in written.items():
        print(f"wrote {rows} rows to {path}", file=sys.stderr)
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from .sweep.cli import dry_run, run_sweep

    return dry_run(a) if a.dry_run else run_sweep(a)


def cmd_methods(a: argparse.Namespace) -> int:
    """One line per method: name, capability columns (targets, λ on W_v, 4-bit base, merge, export), summary."""
    import dataclasses

    from .methods import METHODS
    from .methods.capabilities import describe

    items = sorted(METHODS.items())  # registration order depends on which file imports which
    if a.json:
        for name, cls in items:
            print(json.dumps({"name": name, "summary": cls.summary,
                              "capabilities": dataclasses.asdict(cls.capabilities)}, ensure_ascii=False))
        return 0
    if a.markdown:
        print("| method | targets | λ | 4-bit | merge | export | summary |")
        print("|---|---|---|---|---|---|---|")
        for name, cls in items:
            summary = cls.summary.replace("|", "\\|")
            print(f"| `{name}` | " + " | ".join(describe(cls.capabilities).values()) + f" | {summary} |")
        return 0
    cols = [[name, *(f"{k}:{v}" if k != "targets" else v for k, v in describe(cls.capabilities).items())]
            for name, cls in items]
    widths = [max(len(c[i]) for c in cols) for i in range(len(cols[0]))]
    for c, (_, cls) in zip(cols, items, strict=True):
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + f"  {cls.summary}")
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    from .tasks import TASKS

    width = max(len(n) for n in TASKS)
    kinds = max(len(t.kind.name) for _, t in TASKS.items())
    for name, task in TASKS.items():
        print(f"{name.ljust(width)}  {task.kind.name.ljust(kinds)}  {task.description}")
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    from .report.text import runs_table

    store = _existing_store(a.store)
    records = store.runs(a.status)
    if a.json:
        for r in records:
            print(json.dumps(r, sort_keys=True, default=str))
    elif not records:
        print(f"no runs in {store.path}")
    else:
        print(runs_table(records))
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    store = _existing_store(a.store)
    rec = store.find(a.run)
    if rec is None:
        raise ConfigError(f"no single run matches {a.run!r} in {store.path}; see `eft runs`.")
    print(json.dumps(rec, indent=2, sort_keys=True, default=str))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report.build import build, parse_formats, write

    formats = parse_formats(a.format)
    check_output_dir(a.out, "--out")
    store = _existing_store(a.store)
    split_list = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    rep = build(store, a.split, split_list(a.tasks), split_list(a.methods), _parse_pairs(a.tag, "--tag"),
                _parse_pairs(a.metric, "--metric"), a.select_lr, [tuple(c) for c in a.compare or []], a.test,
                a.digits, a.ci)
    files = write(rep, store, Path(a.out), formats, plots=not a.no_plots)
    print(rep.markdown_table())
    for note in rep.table.notes:
        print(note)
    print(f"wrote {len(files)} files to {a.out}: " + ", ".join(sorted({f.name for f in files if f.parent == Path(a.out)})),
          file=sys.stderr)
    return 0


def _existing_store(path: str | None) -> Store:
    """The store of a read command, opened read-only: it may sit on a read-only mount, and reading never migrates
    or creates anything."""
    return open_store(path, create=False)


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "methods": cmd_methods, "tasks": cmd_tasks, "runs": cmd_runs,
            "show": cmd_show, "report": cmd_report, "suites": cmd_suites, "suite": cmd_suite, "export": cmd_export}


def _sigterm(signum, frame):  # a SIGTERM ends a run like Ctrl-C: stored as cancelled
    raise KeyboardInterrupt


def _quiet() -> None:
    """Library chatter that says nothing about the user's run (deprecations, optional kernels not installed)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", message=".*kernels.*")
    warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")  # PEFT's EVA hint for GPU memory
    for name in ("bitsandbytes", "transformers", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet()
    parser = build_parser()
    a = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = COMMANDS[a.command](a)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers, not as noise at interpreter exit
        return code
    except BrokenPipeError:  # `eft runs --json | head`: the reader has all it wanted
        _drop_stdout()
        return 141
    except ConfigError as e:
        print(f"eft {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eft {a.command}: cancelled", file=sys.stderr)
        return 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail on the closed pipe again."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout is no real file (captured): nothing left to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
