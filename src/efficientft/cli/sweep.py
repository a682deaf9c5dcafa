"""``eft sweep``: a suite run (or planned, ``--dry-run``) through :func:`efficientft.api.run_suite`.

Its flags are the sweep settings' schema (:data:`efficientft.sweep.options.SWEEP_SETTINGS`), the same one
:func:`~efficientft.api.run_suite` takes its keyword arguments from; only what the command does is written here.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import api
from .flags import add_setting_flags, setting_values, store_arg


def add_parser(sub) -> None:
    w = sub.add_parser("sweep", help="run a suite (YAML grid of runs); finished runs are skipped, killed ones resumed")
    w.add_argument("suite", help="a shipped suite's name (quick, paper-table2, ...; see `eft suites`) or a suite file")
    add_setting_flags(w, settings=api.SWEEP_SETTINGS)  # how it runs, and the environment a suite leaves to the CLI
    w.add_argument("--dry-run", action="store_true", help="list the runs, what would happen to each, and the cost")
    w.add_argument("--json", action="store_true", help="print the plan or the summary as JSON")
    store_arg(w)


def cmd_sweep(a: argparse.Namespace) -> int:
    suite = api.load_suite(a.suite)
    settings = setting_values(a, api.SWEEP_SETTINGS)  # the flags given; the others keep the schema's defaults
    if a.dry_run:
        p = api.plan_suite(suite, a.store, **settings)
        print(json.dumps(api.plan_json(p), default=str) if a.json else api.plan_text(suite, p))
        return 0
    log = (lambda line: print(line, file=sys.stderr)) if a.json else (lambda line: print(line, flush=True))
    summary = api.run_suite(suite, a.store, log=log, on_start=lambda line: print(line, file=sys.stderr), **settings)
    print(json.dumps(summary, default=str) if a.json else api.summary_text(summary))
    return 1 if summary["failed"] else 0
