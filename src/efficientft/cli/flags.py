"""Command-line flags derived from the settings' schemas, and the few helpers every command family shares.

``eft run`` gets one flag per run setting that declares one (:data:`efficientft.config.SETTINGS`), with the
setting's help, group, choices and argparse type; ``eft sweep`` one per sweep setting
(:data:`efficientft.sweep.options.SWEEP_SETTINGS`: how the sweep runs, and the run settings marked ``sweep_flag``).
An absent flag is None, so it never overrides a value from ``--config`` or a default. Flags whose shape differs from
their field (``--role-lr v=4``, ``--rank``, ``--train-file``, ``--no-progress``) are the few written by hand in
:mod:`efficientft.cli.run`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from ..api import DEFAULT_STORE, ENV_STORE
from ..config import SETTINGS
from ..errors import ConfigError
from ..schema import Setting

# argparse's own conversion per rule kind: a wrong spelling fails there with argparse's message, as it always has
_TYPES: dict[str, Callable[[str], Any]] = {"float": float, "int": int, "choice": str.lower, "text": str, "names": str}


def flag_settings(only: Callable[[Setting], bool] = lambda s: True,
                  settings: dict[str, Setting] = SETTINGS) -> dict[str, Setting]:
    """The settings that have a command-line flag (and pass ``only``), in field order."""
    return {name: s for name, s in settings.items() if s.flag_name(name) is not None and only(s)}


def add_setting_flags(parser: argparse.ArgumentParser, groups: dict[str, Any] | None = None,
                      only: Callable[[Setting], bool] = lambda s: True, settings: dict[str, Setting] = SETTINGS) -> None:
    """Add one flag per setting (filtered by ``only``) to ``parser``, or to ``groups[setting.group]`` when given.

    A true-or-false setting is a switch: ``--name`` sets it, and a flag spelled ``--no-...`` clears it."""
    for name, s in flag_settings(only, settings).items():
        target = groups.get(s.group, parser) if groups is not None else parser
        names = [s.flag_name(name), *s.aliases]
        if s.rule.kind == "bool":
            action = "store_false" if names[0].startswith("--no-") else "store_true"
            target.add_argument(*names, dest=name, action=action, default=None, help=s.help or None)
            continue
        if s.rule.kind not in _TYPES:
            raise TypeError(f"setting {name!r} of kind {s.rule.kind!r} cannot be a flag; give it flag=None")
        extra: dict[str, Any] = {"choices": s.rule.choices} if s.rule.kind == "choice" else {}
        if s.rule.kind == "names":  # repeatable, each one name or a comma-separated list
            extra["action"] = "append"
        target.add_argument(*names, dest=name, type=_TYPES[s.rule.kind], metavar=s.metavar, help=s.help or None,
                            **extra)


def setting_values(a: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The settings given on the command line (flags that were absent are left out)."""
    names = flag_settings() if names is None else names
    out = {name: getattr(a, name) for name in names if getattr(a, name, None) is not None}
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in out.items()}  # a repeated names flag


def store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help=f"results store (SQLite file); default ${ENV_STORE} or {DEFAULT_STORE}")


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (each one pair or a comma-separated list of them) as a mapping."""
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
