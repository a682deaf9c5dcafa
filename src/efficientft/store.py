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

**The file** (schema version, migration, what is refused: :mod:`.store_file`). Read commands open it read-only
(``mode=ro``) and never migrate, create tables or switch journal modes, so a store on a read-only mount can be
read. Any SQLite failure leaves as one :class:`~efficientft.errors.StoreError` naming the file and the cause.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import AlreadyDone, ClaimLost, ConfigError, StoreError
from .store_file import SCHEMA_VERSION, check_schema, open_db, store_error

__all__ = ["DEFAULT_STORE", "ENV_STORE", "SCHEMA_VERSION", "STATUSES", "Store", "now", "open_store", "worker_alive", "worker_id"]

STATUSES = ("running", "done", "failed", "diverged", "cancelled")
DEFAULT_STORE = "results/eft.sqlite"
ENV_STORE = "EFT_STORE"
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


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


def _row(key: str, config: dict, *, tags: Any, attempts: int, worker: str, created_at: str,
         started_at: str | None, provenance: Any = None, main_metric: str | None = None) -> dict[str, Any]:
    """A full ``runs`` row for an attempt that has no outcome yet (JSON columns given as dicts or JSON text)."""
    enc = lambda v: v if isinstance(v, str) else _json(_clean(v or {}))  # noqa: E731
    return dict(run_key=key, status="running", task=config.get("task"), method=config.get("method"),
                targets=config.get("targets"), lr_ratio=config.get("lr_ratio"), lr=config.get("lr"),
                seed=config.get("seed"), model=config.get("model"), main_metric=main_metric, main_score=None,
                config=_json(config), scores=None, cost=None, provenance=enc(provenance), details=None,
                tags=enc(tags), error=None, attempts=attempts, worker=worker, created_at=created_at,
                started_at=started_at, finished_at=None)


def _put(db: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               tuple(values.values()))


def scores_text(scores: dict | None) -> str:
    """``dev/accuracy=0.6250, ...``: the numbers of a run, for a message that must not lose them."""
    items = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted((scores or {}).items())]
    return ", ".join(items) or "none"


class _Lost(Exception):
    """This attempt no longer owns its key (another run took the claim over): it must write nothing."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(owner)
        self.owner = owner


class Store:
    """A results store in one SQLite file (created with its folder on first use, unless ``readonly``)."""

    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = self.default_path(path)
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

    # ------------------------------------------------------------------ ownership
    def claim(self, key: str, config: dict, tags: dict | None = None, retry_failed: bool = False,
              reclaim: bool = False, redo_done: bool = False) -> tuple[bool, str]:
        """Atomically take a run for this instance, so that two runs never train (and write) the same key.

        Returns ``(True, previous_status)`` (``"new"`` for a new key, ``"running"`` when a claim is taken over)
        or ``(False, reason)``:

        - ``done``: never run again (skip-if-done), unless ``redo_done`` (``eft run --force``: a shadow attempt,
          the done record stays visible until the new one is done);
        - ``running``: another live process holds the claim; a claim whose ``host:pid`` is dead on this host
          (a killed sweep) is taken over, and so is any claim with ``reclaim`` (another host's dead sweep: we
          cannot see its processes). The run that lost it writes nothing more;
        - ``failed`` / ``diverged``: kept as results unless ``retry_failed`` (the same config fails the same way);
        - ``cancelled`` (Ctrl-C / SIGTERM) is always taken again.

        Unless shadowing a done record, the row becomes ``running`` with this worker and ``attempts`` counts it
        (the :meth:`start` that follows does not count it again); a finished record taken again goes to
        ``history``. The attempt keeps the tags of the record it replaces (a sweep's ``suite``, ``entry``...),
        with ``tags`` over them: ``eft run --force`` of a sweep's run stays counted in that sweep's report.
        """
        me, held = worker_id(), self._held.get(key)
        with self.transaction() as db:
            old = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
            lease = db.execute("SELECT * FROM claims WHERE run_key=?", (key,)).fetchone()
            status = old["status"] if old is not None else "new"
            mine = lease is not None and lease["token"] == held
            if status == "done" and not redo_done and not mine:  # checked here, in the one write transaction:
                return False, "done"  # a run that finished after the caller looked is never trained again
            owner = lease["worker"] if lease is not None else old["worker"] if status == "running" else None
            if (lease is not None or status == "running") and not mine and not reclaim \
                    and worker_alive(owner) is not False:
                return False, "running"
            if status in ("failed", "diverged") and not retry_failed:
                return False, status
            shadow = status == "done"
            if not mine:
                self._before[key] = (dict(old) if old is not None else None, None)
            attempts = lease["attempts"] if mine else (old["attempts"] if old is not None else 0) + 1
            created = old["created_at"] if old is not None else now()
            tags = {**(json.loads(old["tags"] or "{}") if old is not None else {}), **(tags or {})}
            if not shadow:
                if old is not None and status != "running":
                    added = db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                                       (key, now(), _json(self._record(old))))
                    if not mine:
                        self._before[key] = (dict(old), added.lastrowid)
                row = _row(key, config, tags=tags, attempts=attempts, worker=me, created_at=created,
                           started_at=now())
                if status == "running":  # taken over: keep what the row knew
                    row.update(provenance=old["provenance"], main_metric=old["main_metric"])
                _put(db, "runs", row)
            token = held if mine else uuid.uuid4().hex
            _put(db, "claims", dict(run_key=key, token=token, worker=me, claimed_at=now(), shadow=int(shadow),
                                    attempts=attempts, config=_json(config), tags=_json(tags or {}),
                                    provenance=None, main_metric=None, started_at=None))
            if not mine:
                db.execute("DELETE FROM pending_curves WHERE run_key=?", (key,))
            self._held[key] = token
            return True, "running" if lease is not None else status

    def unclaim(self, key: str) -> None:
        """Give back a claim this instance took and wrote no outcome under (a tracker that could not start): the
        key's row and history are as they were before the claim, as if the run had never been tried."""
        held, (old, added) = self._held.pop(key, None), self._before.pop(key, (None, None))
        with self.transaction() as db:
            lease = db.execute("SELECT * FROM claims WHERE run_key=?", (key,)).fetchone()
            if lease is None or lease["token"] != held:
                return
            db.execute("DELETE FROM claims WHERE run_key=?", (key,))
            if lease["shadow"]:  # the done record was never touched
                return
            db.execute("DELETE FROM runs WHERE run_key=?", (key,))
            if old is not None:
                _put(db, "runs", old)
            if added is not None:
                db.execute("DELETE FROM history WHERE rowid=?", (added,))

    def holds(self, key: str) -> bool:
        """Does this instance hold a claim on ``key`` that it has not finished (it may have been taken over)?"""
        return key in self._held

    def owner(self, key: str) -> dict | None:
        """The claim on ``key`` (token, worker, claimed_at, shadow, ...), or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM claims WHERE run_key=?", (key,)).fetchone()
        return dict(row) if row is not None else None

    def _lease(self, db: sqlite3.Connection, key: str) -> sqlite3.Row:
        """The claim this instance may write under: its own, or one whose process is dead (a sweep recording
        that its worker died). Anything else raises :class:`_Lost`: only the owner of a run writes it."""
        held = self._held.get(key)
        lease = db.execute("SELECT * FROM claims WHERE run_key=?", (key,)).fetchone()
        if lease is None or (lease["token"] != held if held is not None else worker_alive(lease["worker"]) is not False):
            row = lease or db.execute("SELECT worker FROM runs WHERE run_key=?", (key,)).fetchone()
            raise _Lost(row["worker"] if row is not None else None)
        return lease

    # ------------------------------------------------------------------ writing
    def start(self, key: str, config: dict, provenance: dict | None = None, tags: dict | None = None,
              main_metric: str | None = None, redo_done: bool = False) -> int:
        """Begin an attempt (claiming the key first unless this instance holds it); returns the attempt number.

        Raises :class:`AlreadyDone` when the key is ``done`` and not ``redo_done`` (it may have been finished by a
        sweep since the caller looked), :class:`StoreError` when another live run holds the key (one clear line
        for ``eft run``). ``tags`` go over those of the record the attempt replaces (see :meth:`claim`)."""
        ok, why = self.claim(key, config, tags, retry_failed=True, redo_done=redo_done)
        if not ok and why == "done":
            rec = self.get(key) or {}
            raise AlreadyDone(f"run {key} was finished by {rec.get('worker') or 'another process'} (at "
                              f"{rec.get('finished_at') or '?'}) while this one was being set up; it was not trained "
                              f"again (use --force to run it again).")
        if not ok:
            lease = self.owner(key) or {}
            raise StoreError(f"run {key} is being trained by {lease.get('worker') or 'another process'} (since "
                             f"{lease.get('claimed_at') or '?'}); it is stored when that run ends: wait for it, or "
                             f"stop it first.")
        try:
            with self.transaction() as db:
                lease = self._lease(db, key)
                tags = {**json.loads(lease["tags"] or "{}"), **(tags or {})}  # the claim's: the replaced record's too
                if lease["shadow"]:  # the done record stays as it is; the attempt lives in its claim
                    db.execute("UPDATE claims SET config=?, tags=?, provenance=?, main_metric=?, started_at=? "
                               "WHERE run_key=?", (_json(config), _json(tags), _json(_clean(provenance or {})),
                                                   main_metric, now(), key))
                    db.execute("DELETE FROM pending_curves WHERE run_key=?", (key,))
                else:
                    old = db.execute("SELECT created_at FROM runs WHERE run_key=?", (key,)).fetchone()
                    _put(db, "runs", _row(key, config, tags=tags, attempts=lease["attempts"], worker=worker_id(),
                                          created_at=old["created_at"] if old is not None else now(),
                                          started_at=now(), provenance=provenance, main_metric=main_metric))
                    db.execute("DELETE FROM curves WHERE run_key=?", (key,))
                return int(lease["attempts"])
        except _Lost as e:
            self._held.pop(key, None)
            raise ClaimLost(f"run {key} was taken over by {e.owner or 'another run'} before it started.") from None

    def finish(self, key: str, status: str, scores: dict | None = None, cost: dict | None = None,
               details: dict | None = None, error: str | None = None, main_score: float | None = None,
               provenance: dict | None = None) -> None:
        """Store the outcome of this instance's attempt, and release its claim.

        An attempt that lost its claim writes nothing: a ``cancelled`` one quietly, others raise
        :class:`StoreError` with their scores. A failure to write (a full disk) raises :class:`StoreError` with
        the real cause and the scores, after marking the row ``failed`` where the store still takes a small write.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        outcome = {"status": status, "scores": _json(_clean(scores or {})), "cost": _json(_clean(cost or {})),
                   "details": _json(_clean(details or {})), "error": error, "finished_at": now(),
                   "main_score": _finite(main_score)}
        if provenance is not None:
            outcome["provenance"] = _json(_clean(provenance))
        try:
            with self.transaction() as db:
                self._write_outcome(db, key, outcome)
        except _Lost as e:
            self._held.pop(key, None)
            if status == "cancelled":
                return
            raise ClaimLost(f"run {key} was taken over by {e.owner or 'another run'} while this one trained; this "
                             f"attempt's outcome was not stored ({status}; scores: {scores_text(scores)}), the "
                             f"store keeps the other run's record.") from None
        except StoreError as e:
            marked = self._abandon(key, f"its outcome could not be stored ({e}): {status}; scores: "
                                        f"{scores_text(scores)}")
            raise StoreError(f"{e} — the run's outcome was not stored ({status}; scores: {scores_text(scores)}); "
                             + ("its row is marked failed." if marked else "its row stays running until this "
                                "process exits, then a sweep takes it over.")) from e
        self._held.pop(key, None)

    def _write_outcome(self, db: sqlite3.Connection, key: str, outcome: dict[str, Any],
                       record: dict[str, Any] | None = None, curves: list[tuple] | None = None) -> None:
        """Write an outcome under the claim: the row's own, or a shadow attempt's (which replaces the done record
        only when done). ``record``/``curves``: a whole record produced elsewhere (Ray), replacing the row."""
        lease = self._lease(db, key)
        old = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
        if lease["shadow"] or old is None or record is not None:  # the attempt as its claim knows it
            row = _row(key, json.loads(lease["config"]), tags=lease["tags"], attempts=lease["attempts"],
                       worker=lease["worker"], created_at=old["created_at"] if old is not None else now(),
                       started_at=lease["started_at"] or lease["claimed_at"], provenance=lease["provenance"],
                       main_metric=lease["main_metric"])
        else:
            row = dict(old)
        row.update(record or {})
        row.update(outcome)
        if lease["shadow"] and outcome["status"] != "done":  # the done record stays; the attempt is kept too
            db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                       (key, now(), _json(self._record(row))))
        else:
            if lease["shadow"]:
                db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                           (key, now(), _json(self._record(old))))
                db.execute("DELETE FROM curves WHERE run_key=?", (key,))
                db.execute("INSERT INTO curves SELECT * FROM pending_curves WHERE run_key=?", (key,))
            _put(db, "runs", row)
            if curves is not None:
                db.execute("DELETE FROM curves WHERE run_key=?", (key,))
                db.executemany("INSERT OR REPLACE INTO curves VALUES (?,?,?,?,?)",
                               [(key, k, int(st), n, _finite(v)) for k, st, n, v in curves])
        db.execute("DELETE FROM pending_curves WHERE run_key=?", (key,))
        db.execute("DELETE FROM claims WHERE run_key=?", (key,))

    def _abandon(self, key: str, error: str) -> bool:
        """After a failed outcome write: release the claim and mark the row failed, if a small write still goes
        through (a shadow attempt leaves the done record alone). Returns whether it did."""
        held = self._held.pop(key, None)
        try:
            with self.transaction() as db:
                lease = db.execute("SELECT * FROM claims WHERE run_key=?", (key,)).fetchone()
                if lease is None or lease["token"] != held:
                    return False
                if not lease["shadow"]:
                    db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE run_key=?",
                               (error, now(), key))
                db.execute("DELETE FROM pending_curves WHERE run_key=?", (key,))
                db.execute("DELETE FROM claims WHERE run_key=?", (key,))
                return not lease["shadow"]
        except StoreError:
            return False

    def import_run(self, record: dict, curves: Iterable[tuple[str, int, str, float]] = ()) -> None:
        """Write a record produced elsewhere (a Ray worker's own store) as this store's row for its key, under
        this instance's claim (the driver claims every run before submitting it)."""
        key = record["run_key"]
        values = {c: record.get(c) for c in ("status", "task", "method", "targets", "lr_ratio", "lr", "seed",
                                             "model", "main_metric", "error", "worker", "started_at")}
        values.update({c: _json(_clean(record.get(c) or {})) for c in _JSON_COLUMNS})
        outcome = {"status": record.get("status") or "failed", "main_score": _finite(record.get("main_score")),
                   "finished_at": record.get("finished_at") or now()}
        try:
            with self.transaction() as db:
                self._write_outcome(db, key, outcome, {k: v for k, v in values.items() if k != "status"},
                                    list(curves))
        except _Lost as e:
            self._held.pop(key, None)
            raise ClaimLost(f"run {key} was taken over by {e.owner or 'another run'}; its record from the Ray "
                             f"worker was not stored ({outcome['status']}).") from None
        self._held.pop(key, None)

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

    def add_curves(self, key: str, rows: Iterable[tuple[str, int, str, float]]) -> None:
        """Rows of (kind, step, name, value), e.g. ("train", 10, "loss", 0.69). Only the run's owner writes them
        (a run whose claim was taken over drops them); a shadow attempt's wait aside until it is done."""
        clean = [(key, k, int(s), n, _finite(v)) for k, s, n, v in rows]
        if not clean:
            return
        with self.transaction() as db:
            try:
                lease = self._lease(db, key)
            except _Lost:
                return
            db.executemany(f"INSERT OR REPLACE INTO {'pending_curves' if lease['shadow'] else 'curves'} "
                           f"VALUES (?,?,?,?,?)", clean)

    def add_predictions(self, key: str, predictions: dict[str, list[dict]]) -> None:
        """Every prediction of a generation run's final evaluation (per split: id, question, generated text,
        extracted answer, gold, correct), replacing those of an earlier attempt. Only the run's owner writes."""
        rows = [(key, split, i, r["id"], r.get("question"), r["generated"], r.get("extracted"), r["gold"],
                 int(bool(r["correct"]))) for split, rs in predictions.items() for i, r in enumerate(rs)]
        with self.transaction() as db:
            try:
                self._lease(db, key)
            except _Lost:
                return
            db.execute("DELETE FROM predictions WHERE run_key=?", (key,))
            db.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def predictions(self, key: str, split: str | None = None) -> list[dict]:
        """A run's stored predictions (all splits, or one), in evaluation order."""
        q, args = "SELECT * FROM predictions WHERE run_key=?", (key,)
        if split is not None:
            q, args = q + " AND split=?", (key, split)
        with self._connect() as db:  # a store of schema 1 opened read-only has no predictions table
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='predictions'").fetchone() is None:
                return []
            rows = db.execute(q + " ORDER BY split, idx", args).fetchall()
        return [{**dict(r), "correct": bool(r["correct"])} for r in rows]

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _record(row: sqlite3.Row | dict) -> dict:
        rec = dict(row)
        for c in _JSON_COLUMNS:
            rec[c] = json.loads(rec[c]) if rec.get(c) else {}
        return rec

    def sweeps(self, suite: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM sweeps", ()
        if suite is not None:
            q, args = q + " WHERE suite=?", (suite,)
        with self._connect() as db:
            rows = db.execute(q + " ORDER BY id", args).fetchall()
        return [{**dict(r), "summary": json.loads(r["summary"]) if r["summary"] else {}} for r in rows]

    def get(self, key: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_key=?", (key,)).fetchone()
        return self._record(row) if row is not None else None

    def find(self, prefix: str) -> dict | None:
        """A run by its key or an unambiguous prefix of it (taken literally: not a LIKE pattern, where ``_`` and
        ``%`` match anything and case is ignored)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE substr(run_key, 1, ?) = ? LIMIT 2",
                              (len(prefix), prefix)).fetchall()
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

    Readers pass ``create=False``: the store opens read-only, so a mistyped path says so instead of reading as an
    empty store (and leaving one behind), and a store on a read-only mount can be read.
    """
    if isinstance(store, Store):
        return store
    if store is not None and not isinstance(store, (str, os.PathLike)):  # e.g. {} would silently be the default
        raise TypeError(f"store must be a Store, a path (str or Path) or None (the default store); got "
                        f"{type(store).__name__} {repr(store)[:60]}.")
    return Store(store, readonly=not create)  # read-only: a missing store is named, never created
