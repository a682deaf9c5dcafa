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
    "export_store": "export", "run_key": "resolve",
}
__all__ = [
    "__version__", "ConfigError", "RunConfig", "Store", "Suite", "PlannedRun", "Report", "open_store", "run",
    "load_suite", "list_suites", "run_suite", "runs_frame", "curves_frame", "build_report", "table_frame",
    "export_store", "run_key",
]

if TYPE_CHECKING:
    from .api import (
        build_report,
        curves_frame,
        list_suites,
        load_suite,
        run,
        run_suite,
        runs_frame,
        table_frame,
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
