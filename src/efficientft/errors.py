"""User-facing errors.

Anything the user can fix (a typo, a missing file, a value out of range) raises :class:`ConfigError`; the command
line prints its message without a traceback and exits with status 2.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad input from the user: the message says what was wrong and what is accepted.

    ``field``: the setting whose rule failed (``lr``, ``method_args.rank``), when one did; a suite reads it to
    point at the line that set the field."""

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field


class StoreError(ConfigError):
    """The results store cannot be used as asked (not a store, corrupt, newer schema, read-only, full, owned by
    another run): the message names the file, what is wrong and what to do; the command line exits with 2."""


class ClaimLost(StoreError):
    """Another run took over this run's key (``--reclaim``): this one stored nothing, and that is no failure of
    the run itself (a sweep counts it as skipped)."""


class AlreadyDone(StoreError):
    """The run's key is ``done`` in the store (perhaps finished by a sweep after the caller looked) and the caller
    did not ask to run it again: nothing was trained or written."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A " Did you mean 'x'?" suffix for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> ConfigError:
    """The standard error for an unknown name: what was asked, the closest match, everything accepted."""
    choices = sorted(choices)
    return ConfigError(f"unknown {kind} {name!r}.{did_you_mean(name, choices)} Known {kind}s: {', '.join(choices)}.")


def not_a_folder(kind: str, path: str | os.PathLike, where: str = "") -> ConfigError:
    """The error for a path that should be a folder: it does not exist, or it is a file (said as such: "does not
    exist" about a file that is there sends the user looking for the wrong mistake). ``where``: where it came from."""
    what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
    return ConfigError(f"{kind} {str(path)!r} {what}{f' ({where})' if where else ''}.")


def not_a_file(kind: str, path: str | os.PathLike) -> ConfigError:
    """The error for a path that should be a file: it does not exist, or it is something else (a folder)."""
    what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
    return ConfigError(f"{kind} {str(path)!r} {what}.")
