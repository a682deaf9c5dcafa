"""The ``eft`` command line: thin — it parses, calls the Python API (:mod:`efficientft.api`), and prints.

One module per command family: :mod:`~efficientft.cli.run` (``eft run``), :mod:`~efficientft.cli.sweep`
(``eft sweep``), :mod:`~efficientft.cli.results` (``runs``, ``show``, ``report``, ``export``) and
:mod:`~efficientft.cli.listing` (``methods``, ``tasks``, ``suites``, ``suite show``); flags derived from the
settings' schemas are in :mod:`~efficientft.cli.flags`. Nothing imports this package but ``python -m efficientft``.

Exit codes: 0 success; 1 a run failed or diverged; 2 bad input or an unusable results store (one clear message,
no traceback); 130 cancelled; 141 its output pipe was closed (``eft runs --json | head``: it stops quietly).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..errors import ConfigError
from ..quiet import quiet_libraries
from . import listing, results
from . import run as run_cmd
from . import sweep as sweep_cmd
from .run import config_from_args

__all__ = ["COMMANDS", "build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eft", description="EfficientFT: efficient fine-tuning benchmark.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cmd.add_parser(sub)
    sweep_cmd.add_parser(sub)
    listing.add_parsers(sub)
    results.add_parsers(sub)
    return parser


COMMANDS = {"run": run_cmd.cmd_run, "sweep": sweep_cmd.cmd_sweep, "methods": listing.cmd_methods,
            "tasks": listing.cmd_tasks, "runs": results.cmd_runs, "show": results.cmd_show,
            "report": results.cmd_report, "suites": listing.cmd_suites, "suite": listing.cmd_suite,
            "export": results.cmd_export}


def _sigterm(signum, frame):  # a SIGTERM ends a run like Ctrl-C: stored as cancelled
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
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
