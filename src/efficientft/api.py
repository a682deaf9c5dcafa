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
from .store import Store, open_store

if TYPE_CHECKING:
    import pandas as pd

    from .report.build import Report
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
        progress: bool = False) -> dict[str, Any]:
    """Train one run (or take it from the store if it is already ``done`` there) and return its stored record.

    ``config`` is a :class:`RunConfig` or a mapping of its fields (``{"task": "rte", "method": "lora", ...}``).
    The record has ``status``, ``scores`` (``dev/<metric>``, ...), ``cost``, ``provenance`` and the resolved
    ``config``; ``force=True`` trains again (the earlier record goes to the store's history).
    """
    from .resolve import resolve
    from .train import run as train_run

    _expect(config, (RunConfig, Mapping), "config", "a RunConfig or a mapping of its fields, e.g. {'task': 'rte', "
            "'method': 'lora'}")
    _expect(force, bool, "force", "True or False")
    _expect(progress, bool, "progress", "True or False")
    where = "" if isinstance(config, RunConfig) else "run config"
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config), where=where)
    cfg = resolve(cfg, where)
    db = open_store(store)
    existing = stored_done(db, cfg, force)
    return existing if existing is not None else train_run(cfg, db, progress=progress, force=force)


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


def run_suite(suite: Suite | str | Path, store: Store | str | Path | None = None, workers: int = 1,
          executor: str = "local", data_dir: str | None = None, device: str | None = None,
          retry_failed: bool = False, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run a suite (or a shipped suite's name) into a store; finished runs are skipped, as with ``eft sweep``.

    Returns the sweep's summary: ``outcomes`` (counts per status), ``failed``, ``selection`` (the model
    selection results, when the suite has a ``selection:`` block), ``wall_s`` and ``steps_trained``.
    """
    from .sweep.runner import SweepOptions, environment
    from .sweep.runner import sweep as run_sweep
    from .sweep.suite import Suite
    from .train import check_inputs

    s = suite if isinstance(suite, Suite) else load_suite(suite)
    opts = SweepOptions(executor=executor, workers=workers, retry_failed=retry_failed,
                        env=environment(data_dir, device))
    problems = check_inputs([r.cfg for r in s.expand(opts.env)])
    if problems:
        raise ConfigError(f"{s.path}: inputs missing, nothing was run:\n  " + "\n  ".join(problems))
    return run_sweep(s, open_store(store), opts, log=log or (lambda line: None))


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
           methods: Sequence[str] | None = None, select_lr: bool = False, out: str | Path | None = None,
           formats: Sequence[str] = ("md", "html", "latex", "csv"), plots: bool = True, **options: Any) -> Report:
    """Build the report of ``eft report`` (and write its files when ``out`` is given).

    ``rep.markdown_table()`` is the results table as Markdown, :func:`table_frame` the same table as a
    DataFrame, ``rep.comparisons`` the paired comparisons; ``options`` are :func:`efficientft.report.build.build`'s
    (``tags``, ``metrics``, ``pairs``, ``test``, ``digits``).
    """
    import inspect

    from .report.build import build, parse_formats, write

    known = [k for k in inspect.signature(build).parameters if k not in ("store", "split", "tasks", "methods",
                                                                         "select_lr")]
    for k in options:
        if k not in known:
            raise TypeError(f"build_report() has no option {k!r}.{did_you_mean(k, known)} Options: "
                            f"{', '.join(known)}.")
    if isinstance(formats, str):
        formats = parse_formats(formats)
    db = open_store(store, create=False)
    rep = build(db, split, _names(tasks, "tasks"), _names(methods, "methods"), select_lr=select_lr, **options)
    if out is not None:
        write(rep, db, Path(out), formats, plots=plots)
    return rep


def table_frame(rep: Report) -> pd.DataFrame:
    """A report's results table as a DataFrame (the columns of ``table.csv``: labels, per-task mean, std, n, CI)."""
    import io

    import pandas as pd

    from .report.build import Report
    from .report.tables import csv_table

    _expect(rep, Report, "rep", "a Report (what build_report() returns)")
    return pd.read_csv(io.StringIO(csv_table(rep.table, rep.collection)))
