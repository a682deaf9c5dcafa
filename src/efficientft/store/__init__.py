"""The results store: embedded SQLite (WAL mode), one row per run, keyed by the hash of its resolved config.

Writes are single short transactions (``BEGIN IMMEDIATE``), so several worker processes may write one store at
once. A run's row goes ``running`` → ``done`` / ``failed`` / ``diverged`` / ``cancelled``; running it again keeps
the earlier finished record in ``history``, so no completed result is ever lost. Per-step curves live in ``curves``.

**Ownership.** Whoever trains a key holds its *claim* (a row of ``claims`` with a fresh token): sweeps take it
with :meth:`Store.claim` (atomic: skip-if-done, one owner per key, take-over of claims left by a dead process),
``eft run`` through :meth:`Store.start`. Only the holder of the current claim may write the run's curves and
outcome; a run whose claim was taken over (``--reclaim``, or two ``eft run`` of one key) writes nothing, so the
last one to stop never overwrites the other's record. A run again of a ``done`` key (``eft run --force``) is a
*shadow* attempt: the done record stays the visible row (for ``runs``, ``show``, ``report`` and sweeps) and is
replaced only when the new attempt ends ``done``; any other end goes to ``history``.

**The file** (schema version, migration, what is refused: :mod:`.connection`). Read commands open it read-only
(``mode=ro``) and never migrate, create tables or switch journal modes, so a store on a read-only mount can be
read. Any SQLite failure leaves as one :class:`~efficientft.errors.StoreError` naming the file and the cause.

The parts: :mod:`.connection` (the file, its schema and migrations, connections and transactions),
:mod:`.claims` (claims and leases: who may write a run), :mod:`.policy` (which stored statuses run again),
:mod:`.liveness` (workers and whether they still run), :mod:`.records` (reading runs, history, curves),
:mod:`.rows` (a row's encoding).
"""

from __future__ import annotations

import os

from .claims import Claims
from .connection import DEFAULT_STORE, ENV_STORE, SCHEMA_VERSION, Connection
from .liveness import now, worker_alive, worker_id
from .policy import STATUSES, skip_reason
from .records import Records
from .rows import scores_text

__all__ = ["DEFAULT_STORE", "ENV_STORE", "SCHEMA_VERSION", "STATUSES", "Store", "now", "open_store", "scores_text",
           "skip_reason", "worker_alive", "worker_id"]


class Store(Claims, Records, Connection):
    """A results store in one SQLite file (created with its folder on first use, unless ``readonly``)."""


def open_store(store: Store | str | os.PathLike | None = None, create: bool = True) -> Store:
    """A :class:`Store` as given, else the store at that path (default ``$EFT_STORE`` or ``results/eft.sqlite``).

    Readers pass ``create=False``: the store opens read-only, so a mistyped path says so instead of reading as an
    empty store (and leaving one behind), and a store on a read-only mount can be read.
    """
    if isinstance(store, Store):
        return store
    if store is not None and not isinstance(store, (str, os.PathLike)):  # e.g. {} would silently be the default
        raise TypeError(f"store must be a Store, a path (str or Path) or None (the default store); got "
                        f"{type(store).__name__} {repr(store)[:60]}.")
    return Store(store, readonly=not create)  # read-only: a missing store is named, never created
