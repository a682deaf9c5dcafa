"""EfficientFT: one protocol for comparing efficient fine-tuning methods.

The Python API (``import efficientft as eft``)::

    cfg = eft.RunConfig(task="rte", method="lora", targets="qv", lr_ratio=4, steps=200)
    record = eft.run(cfg, store="results/eft.sqlite")       # the stored record: status, scores, cost, provenance
    summary = eft.run_suite("quick", store="results/eft.sqlite")  # a shipped suite by name, or a suite file
    df = eft.runs_frame("results/eft.sqlite")                     # pandas, one row per run
    rep = eft.build_report("results/eft.sqlite"); eft.table_frame(rep)

The names are imported on first use, so ``import efficientft`` (and ``eft --version``) does not load torch.
The ``eft`` command line (:mod:`efficientft.cli`) is a thin layer over the same functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it (no name equals a subpackage's: ``efficientft.report`` is a package)
_EXPORTS = {
    "ConfigError": "errors", "RunConfig": "config", "Store": "store", "Suite": "sweep.suite",
    "PlannedRun": "sweep.suite", "Report": "report.build",
    "open_store": "store", "run": "api", "load_suite": "api", "list_suites": "api", "run_suite": "api",
    "runs_frame": "api", "curves_frame": "api", "build_report": "api", "table_frame": "api",
    "export_store": "export", "run_key": "resolve", "check_run": "api", "push_to_hub": "api", "plan_suite": "api",
    "plan_text": "api", "plan_json": "api", "summary_text": "api", "runs_table": "api", "list_methods": "api",
    "list_tasks": "api", "suite_text": "api", "export_runs": "api", "write_report": "api",
    "leaderboard": "api", "leaderboard_markdown": "api",
}
__all__ = [
    "__version__", "ConfigError", "RunConfig", "Store", "Suite", "PlannedRun", "Report", "open_store", "run",
    "load_suite", "list_suites", "run_suite", "runs_frame", "curves_frame", "build_report", "table_frame",
    "export_store", "run_key", "check_run", "push_to_hub", "plan_suite", "plan_text", "plan_json", "summary_text",
    "runs_table", "list_methods", "list_tasks", "suite_text", "export_runs", "write_report", "leaderboard",
    "leaderboard_markdown",
]

if TYPE_CHECKING:
    from .api import (
        build_report,
        check_run,
        curves_frame,
        export_runs,
        leaderboard,
        leaderboard_markdown,
        list_methods,
        list_suites,
        list_tasks,
        load_suite,
        plan_json,
        plan_suite,
        plan_text,
        push_to_hub,
        run,
        run_suite,
        runs_frame,
        runs_table,
        suite_text,
        summary_text,
        table_frame,
        write_report,
    )
    from .config import RunConfig
    from .errors import ConfigError
    from .export import export_store
    from .report.build import Report
    from .resolve import run_key
    from .store import Store, open_store
    from .sweep.suite import PlannedRun, Suite


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'efficientft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
