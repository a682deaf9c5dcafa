"""The results store's file and connection: its schema and version, opening it (read-only without a single write),
telling a store from anything else, one clear :class:`~efficientft.errors.StoreError` for each way a file can be
wrong, and the connection and write transaction every other part of the store goes through.

``PRAGMA user_version`` is the schema version. Version 0 is the unversioned layout EfficientFT wrote before
versions existed (no ``claims``); it is read as it is and migrated in one transaction when first opened to write.
A store of a newer version is refused rather than half-understood.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError

SCHEMA_VERSION = 2  # 0: the unversioned layout (no claims); 1: claims and the pending curves of shadow attempts;
# 2: the predictions of generation runs

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    task        TEXT, method TEXT, targets TEXT, lr_ratio REAL, lr REAL, seed INTEGER, model TEXT,
    main_metric TEXT, main_score REAL,
    config      TEXT NOT NULL,
    scores      TEXT, cost TEXT, provenance TEXT, details TEXT, tags TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    worker      TEXT,
    created_at  TEXT NOT NULL, started_at TEXT, finished_at TEXT
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT NOT NULL, replaced_at TEXT NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS curves (
    run_key TEXT NOT NULL, kind TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_key, kind, step, name)
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, suite TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS claims (
    run_key TEXT PRIMARY KEY, token TEXT NOT NULL, worker TEXT NOT NULL, claimed_at TEXT NOT NULL,
    shadow INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL, config TEXT NOT NULL, tags TEXT,
    provenance TEXT, main_metric TEXT, started_at TEXT
);
CREATE TABLE IF NOT EXISTS pending_curves (
    run_key TEXT NOT NULL, kind TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_key, kind, step, name)
);
CREATE TABLE IF NOT EXISTS predictions (
    run_key TEXT NOT NULL, split TEXT NOT NULL, idx INTEGER NOT NULL, id TEXT NOT NULL, question TEXT,
    generated TEXT NOT NULL, extracted TEXT, gold TEXT NOT NULL, correct INTEGER NOT NULL,
    PRIMARY KEY (run_key, split, idx)
);
"""
# version 0 -> 1: a run that an older version left running is owned by its worker, as that version judged it
V0_CLAIMS = """
INSERT OR IGNORE INTO claims (run_key, token, worker, claimed_at, attempts, config, tags)
    SELECT run_key, 'v0:' || run_key, COALESCE(worker, ''), COALESCE(started_at, created_at), attempts, config, tags
    FROM runs WHERE status = 'running';
"""
RUN_COLUMNS = {"run_key", "status", "task", "method", "targets", "lr_ratio", "lr", "seed", "model", "main_metric",
                "main_score", "config", "scores", "cost", "provenance", "details", "tags", "error", "attempts",
                "worker", "created_at", "started_at", "finished_at"}


def open_db(path: Path, readonly: bool, timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit). ``readonly``: a ``mode=ro`` URI, so that not
    even the WAL index is written; ``immutable`` when the folder is read-only (SQLite could not make its -shm)."""
    if readonly:
        uri = path.resolve().as_uri() + "?mode=ro"
        if not os.access(path.parent, os.W_OK) and not path.with_name(path.name + "-wal").exists():
            uri += "&immutable=1"  # nobody can be writing it
        db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    else:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    db.row_factory = sqlite3.Row
    return db


def store_error(path: Path, e: sqlite3.DatabaseError, timeout: float) -> StoreError:
    """The one line a user sees for an SQLite failure: which file, what is wrong with it, what to do."""
    msg, where = str(e), f"results store {path}"
    low = msg.lower()
    if "not a database" in low or "encrypted" in low:
        return StoreError(f"{path} is not an EfficientFT results store ({msg}); pass --store with a results store, "
                          f"or a new file name to start one.")
    if "malformed" in low or "corrupt" in low:
        return StoreError(f"{where} is corrupt ({msg}); restore it from a backup, or pass --store with another file.")
    if "readonly" in low or "read-only" in low:
        return StoreError(f"{where} is read-only ({msg}); `eft runs`, `show` and `report` can read it; to store "
                          f"runs pass --store with a writable file.")
    if "unable to open" in low:
        return StoreError(f"cannot open {where} ({msg}); its folder must be readable (and writable to store runs).")
    if "locked" in low:
        return StoreError(f"{where} stayed locked by another process for over {timeout:g} s ({msg}); try again.")
    return StoreError(f"{where}: {type(e).__name__}: {msg}")


def check_schema(db: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Refuse a file that is not a store of a schema we read; unless ``readonly``, create or migrate it."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "runs" not in tables or readonly and not tables:
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise StoreError(f"{path} is an SQLite database but not an EfficientFT results store (its tables: "
                         f"{shown}); pass --store with a results store, or a new file name.")
    if "runs" in tables:
        missing = RUN_COLUMNS - {r[1] for r in db.execute("PRAGMA table_info(runs)")}
        if missing:
            raise StoreError(f"{path} has a runs table but not an EfficientFT one (no column "
                             f"{', '.join(sorted(missing))}); pass --store with a results store.")
    if version > SCHEMA_VERSION:
        raise StoreError(f"results store {path} has schema version {version}, newer than this EfficientFT reads (up "
                         f"to {SCHEMA_VERSION}); upgrade efficientft, or pass --store with another file.")
    if readonly or version == SCHEMA_VERSION:
        return
    db.execute("PRAGMA journal_mode=WAL")
    # one transaction: a second process opening the same old store at once waits, then finds it migrated
    # every version's tables are CREATE IF NOT EXISTS: running SCHEMA adds what an older store lacks
    db.executescript("BEGIN IMMEDIATE;" + SCHEMA + (V0_CLAIMS if "runs" in tables and version == 0 else "")
                     + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

DEFAULT_STORE = "results/eft.sqlite"
ENV_STORE = "EFT_STORE"


class Connection:
    """Opening the store's file (created with its folder on first use, unless ``readonly``), its connections and
    its write transaction."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = self.default_path(path)
        self.shown_as = str(self.path)  # how reports name it (a store rebuilt from an export: the export's path)
        self.timeout = timeout
        self.readonly = readonly
        self._held: dict[str, str] = {}  # run key -> token of the claim this instance holds
        self._before: dict[str, tuple] = {}  # run key -> (its row before our claim, the history row it added)
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a folder; pass --store with a file path.")
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no results store at {self.path}; run something first or pass --store PATH.")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the folder of the results store {self.path}: "
                                 f"{e.strerror or e}; pass --store with a writable path.") from None
            if not os.access(self.path.parent, os.W_OK) or self.path.exists() and not os.access(self.path, os.W_OK):
                # said now, before a run trains for an hour and then cannot store its outcome
                raise StoreError(f"results store {self.path} is read-only (its file or folder cannot be written); "
                                 f"`eft runs`, `show` and `report` can read it; to store runs pass --store with a "
                                 f"writable file.")
        self._open_checked()

    @staticmethod
    def default_path(path: str | os.PathLike | None = None) -> Path:
        """The store's file: ``path``, else $EFT_STORE, else the default."""
        return Path(path or os.environ.get(ENV_STORE) or DEFAULT_STORE)

    # ------------------------------------------------------------------ opening
    def _open(self) -> sqlite3.Connection:
        return open_db(self.path, self.readonly, self.timeout)

    @contextmanager
    def _connect(self, setup: bool = True):
        """A connection; any SQLite failure leaves as one :class:`StoreError` naming this file and the cause."""
        try:
            db = self._open()
            try:
                if setup and not self.readonly:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                yield db
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise store_error(self.path, e, self.timeout) from e

    def _open_checked(self) -> None:
        """Refuse a file that is not a store of a schema we read; migrate (or create) it when opened to write."""
        with self._connect(setup=False) as db:  # no journal-mode switch before we know the file is ours
            check_schema(db, self.path, self.readonly)

    @contextmanager
    def transaction(self):
        """One atomic write: ``BEGIN IMMEDIATE`` takes the write lock up front, so concurrent writers queue."""
        with self._connect() as db:
            for attempt in range(50):
                try:
                    db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as e:  # "database is locked" beyond busy_timeout
                    if "locked" not in str(e) or attempt == 49:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk at COMMIT): a ROLLBACK then fails
                # with "cannot rollback" and would hide the real error
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
