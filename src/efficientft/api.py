"""The Python API for notebooks and scripts: what the ``eft`` commands do, as functions that return objects.

Everything here is re-exported from :mod:`efficientft` (``import efficientft as eft``; ``eft.run(...)``). The
functions take a store as a :class:`~efficientft.store.Store` or a path, so a notebook can pass a string; they
follow the command line's rules (a finished run is not trained again; bad input raises
:class:`~efficientft.errors.ConfigError` before anything trains).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig
from .errors import ConfigError, did_you_mean
from .export import FORMATS as EXPORT_FORMATS
from .store import DEFAULT_STORE, ENV_STORE, Store, open_store  # noqa: F401 - the CLI names the default store
from .sweep.options import SWEEP_SETTINGS  # run_suite's keywords and eft sweep's flags

if TYPE_CHECKING:
    import pandas as pd

    from .report.build import Report
    from .report.leaderboard import Leaderboard
    from .sweep.options import SweepOptions
    from .sweep.suite import Suite


# ---------------------------------------------------------------------------------------------- misuse
# A notebook calls these with whatever is at hand; a wrong type is one TypeError sentence naming the argument, what
# it got and what is accepted, raised here rather than as an AttributeError or a pathlib error from deep inside.
def _got(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _expect(value: Any, types: type | tuple[type, ...], what: str, accepted: str) -> None:
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                                else (types,)):
        raise TypeError(f"{what} must be {accepted}; got {_got(value)}.")


def _names(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    """A list of names from a list, or from one string (comma-separated, as on the command line: a string is not
    taken for the list of its characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if not isinstance(value, Iterable) or isinstance(value, Mapping) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{what} must be a list of names (or one comma-separated string); got {_got(value)}.")
    return list(value)


def run(config: RunConfig | dict[str, Any], store: Store | str | Path | None = None, force: bool = False,
        progress: bool | None = False) -> dict[str, Any]:
    """Train one run (or take it from the store if it is already ``done`` there) and return its stored record.

    ``config`` is a :class:`RunConfig` or a mapping of its fields (``{"task": "rte", "method": "lora", ...}``).
    The record has ``status``, ``scores`` (``dev/<metric>``, ...), ``cost``, ``provenance`` and the resolved
    ``config``; ``force=True`` trains again (the earlier record goes to the store's history). ``progress=None``
    leaves the progress bar to the config's ``progress`` setting.
    """
    from .train import run as train_run

    _expect(config, (RunConfig, Mapping), "config", _CONFIG)
    _expect(force, bool, "force", "True or False")
    _expect(progress, (bool, type(None)), "progress", "True or False (or None: the config's progress setting)")
    cfg = _config(config)
    db = open_store(store)
    existing = stored_done(db, cfg, force)
    return existing if existing is not None else train_run(cfg, db, progress=progress, force=force)


_CONFIG = "a RunConfig or a mapping of its fields, e.g. {'task': 'rte', 'method': 'lora'}"


def _config(config: RunConfig | Mapping[str, Any], where: str | None = None) -> RunConfig:
    """``config`` (a RunConfig or a mapping of its fields) resolved; ``where`` (a file name) starts every error
    message (default: ``run config`` for a mapping, nothing for a RunConfig)."""
    _expect(config, (RunConfig, Mapping), "config", _CONFIG)
    from .resolve import resolve

    if where is None:
        where = "" if isinstance(config, RunConfig) else "run config"
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config), where=where)
    return resolve(cfg, where)


def check_run(config: RunConfig | dict[str, Any], push_to_hub: str | None = None, where: str | None = None
              ) -> RunConfig:
    """The resolved config of a run, after the checks that must not cost a run: its settings, the export folder
    (it can be created and written) and, with ``push_to_hub``, the Hub repo id (an export folder is needed).
    ``where`` (the config file's name) starts an error message.

    ``eft run`` calls this before it looks in the store; :func:`run` takes the config it returns."""
    from .hub import check_hub_repo
    from .outputs import check_output_dir

    if push_to_hub is not None:
        _expect(push_to_hub, str, "push_to_hub", "a Hub repo id like 'owner/name'")
    if where is not None:
        _expect(where, str, "where", "a file name (text)")
    cfg = _config(config, where)
    if push_to_hub is not None:
        check_hub_repo(push_to_hub, cfg.export_dir)
    if cfg.export_dir:
        check_output_dir(cfg.export_dir, "--export-dir")
    return cfg


def push_to_hub(repo: str, folder: str | Path, private: bool = True) -> str:
    """Upload an exported folder (a run's ``export_dir``) to the Hugging Face Hub repo ``repo`` (created, private by
    default, if it does not exist); returns the repo's URL. Needs a network and a token (``$HF_TOKEN``)."""
    from .hub import push_to_hub as push

    _expect(repo, str, "repo", "a Hub repo id like 'owner/name'")
    _expect(folder, (str, os.PathLike), "folder", "the path of the exported folder")
    _expect(private, bool, "private", "True or False")
    return push(repo, Path(folder), private=private)


def run_key(config: RunConfig | dict[str, Any]) -> str:
    """The run's key in the results store: a hash of the resolved config's identity (method arguments, task,
    data files by content, hardware precision made explicit). It replaces ``RunConfig.key()``."""
    from .resolve import run_key as key_of

    return key_of(_config(config))


def stored_done(store: Store, cfg: RunConfig, force: bool = False) -> dict[str, Any] | None:
    """The stored record when ``cfg`` is already ``done`` (and not ``force``), so it is not trained again.

    Only a training run exports weights, so a done run asked for an ``export_dir`` it was not exported to is a
    :class:`ConfigError` (train it again with ``force``) rather than a record that seems to have put them there.
    """
    from .resolve import run_key

    key = run_key(cfg)
    existing = store.get(key)
    if existing is None or existing["status"] != "done" or force:
        return None
    if cfg.export_dir and not _exported_to(existing, cfg.export_dir):
        raise ConfigError(f"run {key} is already done in {store.path} and its weights were not exported to "
                          f"{cfg.export_dir} (only a training run exports): add --force to train it again.")
    return existing


def _exported_to(record: dict[str, Any], folder: str) -> bool:
    done = ((record.get("details") or {}).get("export") or {}).get("dir")
    return bool(done) and Path(done).resolve() == Path(folder).resolve() and Path(folder).is_dir()


def load_suite(suite: str | Path) -> Suite:
    """A suite from a file or a shipped suite's name (``"quick"``, ``"paper-table2"``; see :func:`list_suites`).

    ``suite.expand()`` lists its runs (each a ``PlannedRun`` with ``.cfg``, ``.key`` and ``.tags``)."""
    from .sweep.suite import load_suite as load

    if isinstance(suite, Mapping):
        raise TypeError("suite must be a shipped suite's name or the path of a suite file, not a mapping; write "
                        "the mapping to a YAML file (yaml.safe_dump) and pass its path.")
    _expect(suite, (str, os.PathLike), "suite", "a shipped suite's name (see list_suites()) or a suite file's path")
    return load(suite)


def list_suites() -> dict[str, str]:
    """The shipped suites: {name: one-line description}."""
    from .suites import SUITES

    return {name: SUITES.description(name) for name in SUITES.names()}


def _sweep_options(settings: dict[str, Any]) -> SweepOptions:
    """The sweep settings (:data:`~efficientft.sweep.options.SWEEP_SETTINGS`) of a call, checked by their rules."""
    from .sweep.options import sweep_options

    return sweep_options(**settings)  # an unknown name: a TypeError naming the settings


def _suite(suite: Suite | str | Path) -> Suite:
    from .sweep.suite import Suite

    return suite if isinstance(suite, Suite) else load_suite(suite)


def plan_suite(suite: Suite | str | Path, store: Store | str | Path | None = None, **settings: Any) -> dict[str, Any]:
    """What :func:`run_suite` would do, without running anything (``eft sweep --dry-run``): ``runs`` (each with the
    planned run, its ``state`` — new, rerun, done... —, ``steps`` and estimated seconds ``est_s``), counts per state,
    ``to_run`` and the estimated cost. ``settings`` are :func:`run_suite`'s. The store is only read: a missing one
    is not created."""
    from .sweep.runner import plan

    s = _suite(suite)
    opts = _sweep_options(settings)
    if store is None or isinstance(store, (str, os.PathLike)):  # a plan only reads: a missing store is not created
        path = Store.default_path(store)
        db = Store(path, readonly=True) if path.exists() else None
    else:
        db = open_store(store)
    return plan(s, db, opts)


def run_suite(suite: Suite | str | Path, store: Store | str | Path | None = None, *,
              log: Callable[[str], None] | None = print, on_start: Callable[[str], None] | None = None,
              **settings: Any) -> dict[str, Any]:
    """Run a suite (or a shipped suite's name) into a store; finished runs are skipped, as with ``eft sweep``.

    ``settings`` are the sweep's (:data:`efficientft.sweep.options.SWEEP_SETTINGS`, ``eft sweep``'s flags): how it
    runs (``workers``, ``executor``, ``retry_failed``, ``fresh_process``, ``reclaim``, ``early_stopping``,
    ``ray_address``, ``ray_num_cpus``) and what it sets on every run (``model``, ``train_data``, ``data_dir``,
    ``device``). ``log`` gets one line per finished run; ``on_start`` one line (the suite, its runs, the store and
    the executor) once every input is found, before the first run. Returns the sweep's summary: ``outcomes``
    (counts per status), ``failed``, ``selection`` (the model selection results, when the suite has a
    ``selection:`` block), ``wall_s`` and ``steps_trained``.
    """
    from .sweep.runner import check_options
    from .sweep.runner import sweep as run_sweep
    from .train import check_inputs

    s = _suite(suite)
    opts = _sweep_options(settings)
    runs = s.expand(opts.env)  # every config validated before the store is even opened
    check_options(s, opts)
    problems = check_inputs([r.cfg for r in runs])  # and every data set and model found, before any training
    if problems:
        raise ConfigError(f"{s.path}: inputs missing, nothing was run:\n  " + "\n  ".join(problems))
    db = open_store(store)
    if on_start is not None:
        on_start(f"suite {s.name}: {len(runs)} runs, store {db.path}, "
                 f"{'Ray' if opts.executor == 'ray' else f'{opts.workers} worker(s)'}")
    return run_sweep(s, db, opts, log=log or (lambda line: None))


def _with_sweep_settings(f: Callable[..., Any]) -> None:
    """Spell out the sweep settings in ``f``'s signature (for ``help()``, notebooks' completion and the check
    that the API and the CLI offer the same settings): keyword arguments derived from the one schema."""
    import inspect

    from .sweep.options import SWEEP_DEFAULTS

    sig = inspect.signature(f)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    types = {"int": "int", "float": "float", "bool": "bool", "choice": "str", "text": "str", "names": "str"}
    for name, st in SWEEP_SETTINGS.items():
        kind = types.get(st.rule.kind, "Any")
        default = SWEEP_DEFAULTS[name]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f"{kind} | None" if default is None else kind))
    f.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]


_with_sweep_settings(plan_suite)
_with_sweep_settings(run_suite)


def plan_text(suite: Suite, plan: dict[str, Any]) -> str:
    """A plan of :func:`plan_suite` as ``eft sweep --dry-run`` prints it (one row per run, the counts, the cost)."""
    from .sweep.suite import Suite
    from .sweep.text import plan_text as text

    _expect(suite, Suite, "suite", "a Suite (what load_suite() returns)")
    _expect(plan, dict, "plan", "what plan_suite() returns")
    return text(suite, plan)


def plan_json(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan of :func:`plan_suite` as JSON-ready values (``eft sweep --dry-run --json``): one row per run."""
    from .sweep.text import plan_json as rows

    _expect(plan, dict, "plan", "what plan_suite() returns")
    return rows(plan)


def summary_text(summary: dict[str, Any]) -> str:
    """A summary of :func:`run_suite` as ``eft sweep`` prints it: outcomes, failures, early stopping, selection."""
    from .sweep.text import summary_text as text

    _expect(summary, dict, "summary", "what run_suite() returns")
    return text(summary)


def runs_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Stored run records as the table ``eft runs`` prints (one row per run: key, status, task, method, scores)."""
    from .report.text import runs_table as text

    _expect(records, (list, tuple), "records", "a list of run records (Store.runs(), run())")
    return text(records)


def learned(record: Mapping[str, Any]) -> dict[str, Any]:
    """Whether a stored run's main score beat the trivial baseline it recorded (``eft show``'s ``learned``):
    ``metric``, ``score``, ``baseline``, ``learned`` (None: no score or no baseline) and ``collapsed`` (its
    predictions were one class or a constant on that split)."""
    from .report.learned import run_learned

    _expect(record, Mapping, "record", "a run record (Store.find(), run())")
    baseline, ok = run_learned(record)
    key = record.get("main_metric") or ""
    split = key.split("/")[0].replace("best_dev", "dev")
    return {"metric": key, "score": record.get("main_score"), "baseline": baseline if baseline == baseline else None,
            "learned": ok, "collapsed": ((record.get("details") or {}).get("collapsed") or {}).get(split)}


def list_methods() -> list[dict[str, Any]]:
    """The registered methods, by name: ``name``, ``summary``, ``capabilities`` (a mapping) and ``columns`` (the
    capabilities in words, as ``eft methods`` shows them: targets, λ on W_v, 4-bit base, merge, export)."""
    import dataclasses

    from .methods import METHODS
    from .methods.capabilities import describe

    return [{"name": name, "summary": cls.summary, "capabilities": dataclasses.asdict(cls.capabilities),
             "columns": describe(cls.capabilities)}
            for name, cls in sorted(METHODS.items())]  # registration order depends on which file imports which


def list_tasks() -> list[dict[str, str]]:
    """The registered tasks, in registration order: ``name``, ``kind`` (classification, regression, generation...)
    and ``description``."""
    from .tasks import TASKS

    return [{"name": name, "kind": task.kind.name, "description": task.description} for name, task in TASKS.items()]


def suite_text(suite: str | Path) -> str:
    """The YAML of a shipped suite (by name, see :func:`list_suites`) or of a suite file, to copy and edit."""
    from .suites import resolve_suite
    from .textfile import read_text

    _expect(suite, (str, os.PathLike), "suite", "a shipped suite's name (see list_suites()) or a suite file's path")
    return read_text(resolve_suite(suite), "suite file")


def export_runs(out: str | Path, store: Store | str | Path | None = None, fmt: str | None = None,
                status: str | None = None) -> dict[Path, int]:
    """Write the store's runs (flattened: ``config.lr``, ``scores.dev/accuracy``...) to ``out`` and their curves
    beside it (``NAME.curves.SUFFIX``), as CSV, Parquet or JSON lines (``fmt``; default: from ``out``'s suffix).
    The store is opened read-only. Returns {file written: rows}."""
    from .export import export_store

    _expect(out, (str, os.PathLike), "out", "the path of the runs table file")
    if fmt is not None:
        _expect(fmt, str, "fmt", f"one of {', '.join(EXPORT_FORMATS)}")
    if status is not None:
        _expect(status, str, "status", "a run status (done, failed, ...)")
    return export_store(open_store(store, create=False), Path(out), fmt, status)


def runs_frame(store: Store | str | Path | None = None, status: str | Sequence[str] | None = None) -> pd.DataFrame:
    """The store's runs as a pandas DataFrame: one row per run, nested parts as dotted columns
    (``config.lr``, ``scores.dev/accuracy``, ``cost.wall_s``, ``provenance.code.commit``, ``tags.label``)."""
    from .export import runs_frame as frame

    if status is not None and not isinstance(status, str):
        status = _names(status, "status")
    return frame(open_store(store, create=False), status)


def curves_frame(store: Store | str | Path | None = None, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-step curves (train loss, lr, grad norm; evaluation scores) in long format, for the given run keys."""
    from .export import curves_frame as frame

    return frame(open_store(store, create=False), _names(keys, "keys"))


def build_report(store: Store | str | Path | None = None, split: str = "dev", tasks: Sequence[str] | None = None,
           methods: Sequence[str] | None = None, select_lr: bool | str = False, out: str | Path | None = None,
           formats: Sequence[str] = ("md", "html", "latex", "csv"), plots: bool = True, **options: Any) -> Report:
    """Build the report of ``eft report`` (and write its files when ``out`` is given).

    ``rep.markdown_table()`` is the results table as Markdown, :func:`table_frame` the same table as a
    DataFrame, ``rep.comparisons`` the paired comparisons; ``options`` are :func:`efficientft.report.build.build`'s
    (``tags``, ``metrics``, ``pairs``, ``test``, ``digits``). ``select_lr``: True (or ``"selection"``) keeps, per
    configuration and task, the learning rate with the best mean selection score; ``"dev"`` or ``"best_dev"`` choose
    on that split instead.
    """
    return _report(store, split, tasks, methods, select_lr, out, formats, plots, options)[0]


def write_report(out: str | Path, store: Store | str | Path | None = None, split: str = "dev",
                 tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                 select_lr: bool | str = False, formats: Sequence[str] = ("md", "html", "latex", "csv"),
                 plots: bool = True, **options: Any) -> tuple[Report, list[Path]]:
    """:func:`build_report` into the folder ``out`` (checked before the store is read), returning the report and
    the files written (``eft report``)."""
    _expect(out, (str, os.PathLike), "out", "the path of the output folder")
    return _report(store, split, tasks, methods, select_lr, out, formats, plots, options)


def _report(store: Store | str | Path | None, split: str, tasks: Sequence[str] | None,
            methods: Sequence[str] | None, select_lr: bool | str, out: str | Path | None, formats: Sequence[str],
            plots: bool, options: dict[str, Any]) -> tuple[Report, list[Path]]:
    import inspect

    from .outputs import check_output_dir
    from .report.build import build, parse_formats, write

    known = [k for k in inspect.signature(build).parameters if k not in ("store", "split", "tasks", "methods",
                                                                         "select_lr")]
    for k in options:
        if k not in known:
            raise TypeError(f"build_report() has no option {k!r}.{did_you_mean(k, known)} Options: "
                            f"{', '.join(known)}.")
    if isinstance(formats, str):
        formats = parse_formats(formats)
    if out is not None:
        check_output_dir(out, "--out")  # before the store is read: a bad folder must not wait for a report
    db = _results(store)
    rep = build(db, split, _names(tasks, "tasks"), _names(methods, "methods"), select_lr=select_lr, **options)
    files = write(rep, db, Path(out), formats, plots=plots) if out is not None else []
    return rep, files


def _results(store: Store | str | Path | None) -> Store:
    """The store to report on: a store, or an export of one (``eft export``'s ``.parquet`` / ``.csv`` / ``.jsonl``,
    rebuilt by :func:`efficientft.export.load_export`)."""
    if isinstance(store, (str, os.PathLike)):
        from .export import is_export, load_export

        if is_export(store):
            return load_export(store)
    return open_store(store, create=False)


def leaderboard(store: Store | str | Path | None = None, split: str = "dev", tasks: Sequence[str] | None = None,
                methods: Sequence[str] | None = None, select_lr: bool | str = False, reference: str | None = None,
                out: str | Path | None = None, formats: Sequence[str] | str = ("md", "html", "csv"),
                plots: bool = True, tags: dict[str, str] | None = None,
                metrics: dict[str, str] | None = None) -> Leaderboard:
    """The leaderboard of ``eft report --leaderboard`` (and its files in ``out`` when given): per task the mean
    ± 95 % CI over seeds, the entries tied with the best (Holm-adjusted tests at α = 0.05), each entry against a
    ``reference`` (default: LoRA on the same targets); across tasks the average rank, the Friedman test and a
    critical-difference diagram; cost beside score with Pareto plots; tuning and the learned mark.
    ``leaderboard_markdown(lb)`` is its Markdown."""
    from .report.board_output import BOARD_FORMATS, write
    from .report.build import parse_formats
    from .report.leaderboard import build_leaderboard

    if isinstance(formats, str):
        formats = parse_formats(formats)
    bad = [f for f in formats if f not in BOARD_FORMATS]
    if bad:
        raise ConfigError(f"the leaderboard has no {bad[0]} form; accepted formats: {', '.join(BOARD_FORMATS)}.")
    if reference is not None:
        _expect(reference, str, "reference", "a method name, an entry's label or key=value pairs")
    if out is not None:
        _expect(out, (str, os.PathLike), "out", "the path of the output folder")
        from .outputs import check_output_dir

        check_output_dir(out, "--out")
    db = _results(store)
    lb = build_leaderboard(db, split, _names(tasks, "tasks"), _names(methods, "methods"), tags, metrics, select_lr,
                           reference)
    if out is not None:
        write(lb, Path(out), formats, plots=plots)
    return lb


def leaderboard_markdown(lb: Leaderboard) -> str:
    """A leaderboard (what :func:`leaderboard` returns) as one Markdown document."""
    from .report.board_output import markdown

    return markdown(lb)


def table_frame(rep: Report) -> pd.DataFrame:
    """A report's results table as a DataFrame (the columns of ``table.csv``: labels, per-task mean, std, n, CI)."""
    import io

    import pandas as pd

    from .report.build import Report
    from .report.tables import csv_table

    _expect(rep, Report, "rep", "a Report (what build_report() returns)")
    return pd.read_csv(io.StringIO(csv_table(rep.table, rep.collection)))
