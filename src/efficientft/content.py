"""A local input is identified by what it holds, not by the path it was given.

One mechanism for every file or folder a run reads: the user's data files (``--train-data``, ``--forgetting-file``,
``--train-file``/``--eval-file``), a local model folder, the GLUE files a task read. :func:`identity` turns a value
that names a local file or folder into ``sha256:<hex>`` of its content (the run key uses it, so an edited file is a
new experiment and the same file spelled from another folder is the same one); :func:`file_sha256` and
:func:`folder_sha256` are what it hashes with, also for provenance and for the inputs a checkpoint records.

Each file is read once per process (streamed in 4 MiB chunks) and its digest cached under its path, inode, size
and change times, so a file rewritten in place is read again. A file changed in the last seconds is not cached (as
git treats a "racily clean" file): a rewrite of the same size within the clock's granularity would keep its times.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PREFIX = "sha256:"
CHUNK = 1 << 22
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

SETTLED_NS = 2_000_000_000  # a file unchanged for this long is cached by its stat

_FILES: dict[tuple, str] = {}
_FOLDERS: dict[tuple, str] = {}


def _stamp(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _settled(stamps: Iterable[tuple]) -> bool:
    now = time.time_ns()
    return all(now - max(s[-2], s[-1]) > SETTLED_NS for s in stamps)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (empty when it is not a file: hub sources are named, not hashed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return ""
    stamp = _stamp(p.stat())
    key = (str(p.resolve()), *stamp)
    if key in _FILES:
        return _FILES[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    if _settled([stamp]):
        _FILES[key] = h.hexdigest()
    return h.hexdigest()


def model_file(name: str) -> bool:
    """The files of a model folder that make the model: its config and its weights (what loading reads)."""
    return name == "config.json" or name.endswith(WEIGHT_SUFFIXES)


def folder_sha256(path: str | os.PathLike, select: Callable[[str], bool] = model_file) -> str:
    """SHA-256 over the selected files of a folder (top level, by name order: each name, then its bytes); empty
    when it is not a folder."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return ""
    files = sorted(f for f in p.iterdir() if f.is_file() and select(f.name))
    stamps = tuple((f.name, *_stamp(f.stat())) for f in files)
    key = (str(p.resolve()), stamps)
    if key in _FOLDERS:
        return _FOLDERS[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):  # noqa: B023
                h.update(chunk)
    if _settled(stamps):
        _FOLDERS[key] = h.hexdigest()
    return h.hexdigest()


def identity(value: str, names: Iterable[str] = ()) -> str:
    """``sha256:<hex>`` of the file or folder ``value`` names, or ``value`` itself when it is a name the reader
    takes first (``names``: a source such as ``boolq``, an alias such as ``minilm``) or nothing local (a hub id, a
    missing file: the run reports that)."""
    if value.lower() in {n.lower() for n in names}:
        return value
    p = Path(value).expanduser()
    if p.is_file():
        return PREFIX + file_sha256(p)
    if p.is_dir():
        return PREFIX + folder_sha256(p)
    return value


def fingerprint(files: Iterable[str]) -> list[str]:
    """The content of the files a split was read from, whatever their paths (sorted digests)."""
    return sorted(file_sha256(f) or str(f) for f in files)
