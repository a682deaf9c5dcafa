"""``eft methods``, ``eft tasks``, ``eft suites`` and ``eft suite show``: what is registered and shipped."""

from __future__ import annotations

import argparse
import json
import sys

from .. import api


def add_parsers(sub) -> None:
    sub.add_parser("suites", help="list the suites shipped with EfficientFT")
    s = sub.add_parser("suite", help="print a shipped suite (to copy and edit)")
    s_sub = s.add_subparsers(dest="suite_command", required=True, metavar="ACTION")
    s_sub.add_parser("show", help="print a shipped suite's YAML").add_argument("name", help="suite name or file")
    s = sub.add_parser("methods", help="list the registered methods and what each can do")
    s.add_argument("--json", action="store_true", help="one JSON object per method: name, summary, capabilities")
    s.add_argument("--markdown", action="store_true", help="the README's table rows of every method")
    sub.add_parser("tasks", help="list the registered tasks")


def cmd_suites(a: argparse.Namespace) -> int:
    suites = api.list_suites()
    width = max(len(n) for n in suites)
    for name, description in suites.items():
        print(f"{name.ljust(width)}  {description}")
    return 0


def cmd_suite(a: argparse.Namespace) -> int:
    sys.stdout.write(api.suite_text(a.name))
    return 0


def cmd_methods(a: argparse.Namespace) -> int:
    """One line per method: name, capability columns (targets, λ on W_v, 4-bit base, merge, export), summary."""
    items = api.list_methods()
    if a.json:
        for m in items:
            print(json.dumps({"name": m["name"], "summary": m["summary"], "capabilities": m["capabilities"]},
                             ensure_ascii=False))
        return 0
    if a.markdown:
        print("| method | targets | λ | 4-bit | merge | export | summary |")
        print("|---|---|---|---|---|---|---|")
        for m in items:
            summary = m["summary"].replace("|", "\\|")
            print(f"| `{m['name']}` | " + " | ".join(m["columns"].values()) + f" | {summary} |")
        return 0
    cols = [[m["name"], *(f"{k}:{v}" if k != "targets" else v for k, v in m["columns"].items())] for m in items]
    widths = [max(len(c[i]) for c in cols) for i in range(len(cols[0]))]
    for c, m in zip(cols, items, strict=True):
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + f"  {m['summary']}")
    return 0


def cmd_tasks(a: argparse.Namespace) -> int:
    tasks = api.list_tasks()
    width = max(len(t["name"]) for t in tasks)
    kinds = max(len(t["kind"]) for t in tasks)
    for t in tasks:
        print(f"{t['name'].ljust(width)}  {t['kind'].ljust(kinds)}  {t['description']}")
    return 0
