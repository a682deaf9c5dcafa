"""The results store: embedded SQLite (WAL mode), one row per run, keyed by the hash of its resolved config.

Writes are single short transactions (``BEGIN IMMEDIATE``), so several worker processes may write one store at
once. A run's row goes ``running`` → ``done`` / ``failed`` / ``diverged`` / ``cancelled``; running it again keeps
the earlier finished record in ``history``, so no completed result is ever lost. Per-step curves live in ``curves``.
Sweeps take runs with :meth:`Store.claim` (atomic: skip-if-done, one worker per key, take-over of runs left
``running`` by a dead process) and record what each sweep did in ``sweeps``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigError

STATUSES = ("running", "done", "failed", "diverged", "cancelled")
DEFAULT_STORE = "results/eft.sqlite"
ENV_STORE = "EFT_STORE"

_SCHEMA = """
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
"""

_JSON_COLUMNS = ("config", "scores", "cost", "provenance", "details", "tags")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool | None:
    """Is the process ``host:pid`` still running? None when it lives on another host (we cannot tell)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (killed, not yet reaped) is dead
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        pass
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_default, allow_nan=True)


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(value: Any) -> Any:
    """NaN is stored as JSON null (SQLite and most JSON readers reject NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class Store:
    """A results store in one SQLite file (created with its folder on first use)."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path or os.environ.get(ENV_STORE) or DEFAULT_STORE)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

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
                db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writing
    def start(self, key: str, config: dict, provenance: dict | None = None, tags: dict | None = None,
              main_metric: str | None = None) -> int:
        """Mark a run ``running`` (a new row, or the next attempt of an existing one); returns the attempt number.

        A row this process has :meth:`claim`-ed is that attempt already (the claim counted it)."""
        with self.transaction() as db:
            old = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
            if old is not None and old["status"] != "running":
                db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                           (key, now(), _json(self._record(old))))
            claimed = old is not None and old["status"] == "running" and old["worker"] == worker_id()
            attempts = old["attempts"] if claimed else (old["attempts"] + 1) if old is not None else 1
            values = dict(
                run_key=key, status="running", task=config.get("task"), method=config.get("method"),
                targets=config.get("targets"), lr_ratio=config.get("lr_ratio"), lr=config.get("lr"),
                seed=config.get("seed"), model=config.get("model"), main_metric=main_metric, main_score=None,
                config=_json(config), scores=None, cost=None, provenance=_json(_clean(provenance or {})), details=None,
                tags=_json(tags or {}), error=None, attempts=attempts, worker=worker_id(),
                created_at=old["created_at"] if old is not None else now(), started_at=now(), finished_at=None,
            )
            cols = ", ".join(values)
            db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
            db.execute("DELETE FROM curves WHERE run_key=?", (key,))
            return attempts

    def finish(self, key: str, status: str, scores: dict | None = None, cost: dict | None = None,
               details: dict | None = None, error: str | None = None, main_score: float | None = None,
               provenance: dict | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self.transaction() as db:
            sets = {"status": status, "scores": _json(_clean(scores or {})), "cost": _json(_clean(cost or {})),
                    "details": _json(_clean(details or {})), "error": error, "finished_at": now(),
                    "main_score": main_score if main_score is None or math.isfinite(main_score) else None}
            if provenance is not None:
                sets["provenance"] = _json(_clean(provenance))
            db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in sets)} WHERE run_key=?",
                       (*sets.values(), key))

    def claim(self, key: str, config: dict, tags: dict | None = None, retry_failed: bool = False,
              reclaim: bool = False) -> tuple[bool, str]:
        """Atomically take a run for this process, so that two workers never train the same key.

        Returns ``(True, previous_status)`` (``"new"`` for a new key) or ``(False, reason)``:

        - ``done``: never run again (skip-if-done);
        - ``running``: another live process has it; a ``running`` row whose ``host:pid`` is dead on this host
          (a killed sweep) is taken over, and so is any ``running`` row with ``reclaim`` (another host's dead
          sweep: we cannot see its processes);
        - ``failed`` / ``diverged``: kept as results unless ``retry_failed`` (the same config fails the same way);
        - ``cancelled`` (Ctrl-C / SIGTERM) is always taken again.

        The claimed row is ``running`` with this worker, and ``attempts`` counts it (the :meth:`start` that
        follows in the same process does not count it again). A finished record taken again goes to ``history``.
        """
        me = worker_id()
        with self.transaction() as db:
            old = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
            status = old["status"] if old is not None else "new"
            if status == "done":
                return False, "done"
            if status == "running" and old["worker"] != me and not reclaim and worker_alive(old["worker"]) is not False:
                return False, "running"
            if status in ("failed", "diverged") and not retry_failed:
                return False, status
            if old is not None and status != "running":
                db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                           (key, now(), _json(self._record(old))))
            values = dict(
                run_key=key, status="running", task=config.get("task"), method=config.get("method"),
                targets=config.get("targets"), lr_ratio=config.get("lr_ratio"), lr=config.get("lr"),
                seed=config.get("seed"), model=config.get("model"), config=_json(config), tags=_json(tags or {}),
                attempts=(old["attempts"] if old is not None else 0) + (old is None or old["worker"] != me
                                                                       or status != "running"), worker=me,
                created_at=old["created_at"] if old is not None else now(), started_at=now(),
            )
            db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
            return True, status

    def import_run(self, record: dict, curves: Iterable[tuple[str, int, str, float]] = ()) -> None:
        """Write a record produced elsewhere (a Ray worker's own store) as this store's row for its key."""
        key = record["run_key"]
        with self.transaction() as db:
            old = db.execute("SELECT attempts, created_at, status, worker FROM runs WHERE run_key=?",
                             (key,)).fetchone()
            claimed = old is not None and old["status"] == "running" and old["worker"] == worker_id()
            values = {c: record.get(c) for c in ("run_key", "status", "task", "method", "targets", "lr_ratio", "lr",
                                                 "seed", "model", "main_metric", "main_score", "error", "worker",
                                                 "started_at", "finished_at")}
            values.update({c: _json(_clean(record.get(c) or {})) for c in _JSON_COLUMNS})
            values["attempts"] = old["attempts"] if claimed else (old["attempts"] if old is not None else 0) + 1
            values["created_at"] = old["created_at"] if old is not None else record.get("created_at") or now()
            db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                       tuple(values.values()))
            db.execute("DELETE FROM curves WHERE run_key=?", (key,))
            db.executemany("INSERT OR REPLACE INTO curves VALUES (?,?,?,?,?)",
                           [(key, k, int(st), n, v if v is None or math.isfinite(v) else None)
                            for k, st, n, v in curves])

    def add_sweep(self, suite: str, summary: dict) -> int:
        """Record a sweep (what it planned, ran and skipped; its selection results); returns its id."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO sweeps (suite, started_at, summary) VALUES (?,?,?)",
                             (suite, now(), _json(_clean(summary))))
            return int(cur.lastrowid)

    def update_sweep(self, sweep_id: int, summary: dict, finished: bool = True) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sweeps SET summary=?, finished_at=? WHERE id=?",
                       (_json(_clean(summary)), now() if finished else None, sweep_id))

    def sweeps(self, suite: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM sweeps", ()
        if suite is not None:
            q, args = q + " WHERE suite=?", (suite,)
        with self._connect() as db:
            rows = db.execute(q + " ORDER BY id", args).fetchall()
        return [{**dict(r), "summary": json.loads(r["summary"]) if r["summary"] else {}} for r in rows]

    def add_curves(self, key: str, rows: Iterable[tuple[str, int, str, float]]) -> None:
        """Rows of (kind, step, name, value), e.g. ("train", 10, "loss", 0.69)."""
        clean = [(key, k, int(s), n, v if v is None or math.isfinite(v) else None) for k, s, n, v in rows]
        if not clean:
            return
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO curves VALUES (?,?,?,?,?)", clean)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _record(row: sqlite3.Row) -> dict:
        rec = dict(row)
        for c in _JSON_COLUMNS:
            rec[c] = json.loads(rec[c]) if rec.get(c) else {}
        return rec

    def get(self, key: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
        return self._record(row) if row is not None else None

    def find(self, prefix: str) -> dict | None:
        """A run by its key or an unambiguous prefix of it."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE run_key LIKE ?", (prefix + "%",)).fetchall()
        return self._record(rows[0]) if len(rows) == 1 else None

    def runs(self, status: str | Iterable[str] | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs", ()
        if status is not None:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            bad = [x for x in statuses if x not in STATUSES]
            if bad:  # an unknown status would match nothing and read as "no runs"
                raise ConfigError(f"unknown run status {bad[0]!r}; accepted: {', '.join(STATUSES)}.")
            q += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = statuses
        with self._connect() as db:
            rows = db.execute(q + " ORDER BY created_at, run_key", args).fetchall()
        return [self._record(r) for r in rows]

    def status(self, key: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM runs WHERE run_key=?", (key,)).fetchone()
        return row["status"] if row else None

    def curves(self, key: str) -> list[tuple[str, int, str, float]]:
        with self._connect() as db:
            rows = db.execute("SELECT kind, step, name, value FROM curves WHERE run_key=? ORDER BY kind, step, name",
                              (key,)).fetchall()
        return [tuple(r) for r in rows]

    def history(self, key: str) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT record FROM history WHERE run_key=? ORDER BY id", (key,)).fetchall()
        return [json.loads(r["record"]) for r in rows]


def open_store(store: Store | str | os.PathLike | None = None, create: bool = True) -> Store:
    """A :class:`Store` as given, else the store at that path (default ``$EFT_STORE`` or ``results/eft.sqlite``).

    Readers pass ``create=False``: a mistyped path must say so, not read as an empty store (and leave one behind).
    """
    if isinstance(store, Store):
        return store
    p = Path(store or os.environ.get(ENV_STORE) or DEFAULT_STORE)
    if not create and not p.is_file():
        raise ConfigError(f"no results store at {p}; run something first or pass --store PATH.")
    return Store(p)
