"""Output folders (``--export-dir``, ``eft report --out``) are checked before any work, not after it.

Training for an hour and then failing to write its adapter (the path is a file, its parent is read-only) loses the
hour; the check here turns each of those into one line before anything starts. Whether a non-empty folder may be
written over is the writer's own rule.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` is (or can be created as) a writable folder; else :class:`ConfigError` naming ``what``."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a folder; pass a folder path (it is created if missing).")
    base = p
    while not base.exists() and base != base.parent:  # the nearest part of the path that exists
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{what} {p} cannot be created: {base} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p} cannot be written: {base} is not writable (read-only or no permission).")
    return p
