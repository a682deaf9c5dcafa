"""Claims and leases: whoever trains a key holds its claim, and only the holder writes the run's curves and outcome.

A run's row goes ``running`` → ``done`` / ``failed`` / ``diverged`` / ``cancelled``; running it again keeps the earlier
finished record in ``history``. Which stored statuses are run again is :func:`.policy.skip_reason`.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from typing import Any

from ..errors import AlreadyDone, ClaimLost, StoreError
from .liveness import now, worker_alive, worker_id
from .policy import STATUSES, skip_reason
from .rows import _JSON_COLUMNS, _clean, _finite, _json, _put, _row, record_of, scores_text


class _Lost(Exception):
    """This attempt no longer owns its key (another run took the claim over): it must write nothing."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(owner)
        self.owner = owner


class Claims:
    """The ownership half of :class:`~efficientft.store.Store`: claiming, starting and finishing attempts."""

    def claim(self, key: str, config: dict, tags: dict | None = None, retry_failed: bool = False,
              reclaim: bool = False, redo_done: bool = False) -> tuple[bool, str]:
        """Atomically take a run for this instance, so that two runs never train (and write) the same key.

        Returns ``(True, previous_status)`` (``"new"`` for a new key, ``"running"`` when a claim is taken over)
        or ``(False, reason)``:

        the reason is :func:`~efficientft.store.policy.skip_reason`'s (``done``, ``running``, ``failed``,
        ``diverged``). ``redo_done`` (``eft run --force``) makes a shadow attempt: the done record stays visible
        until the new one is done. A run whose claim was taken over writes nothing more.

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
            owner = lease["worker"] if lease is not None else old["worker"] if status == "running" else None
            # decided here, in the one write transaction: a run that finished after the caller looked is never
            # trained again
            why = skip_reason(status, owner=owner, claimed=lease is not None, held=mine, redo_done=redo_done,
                              retry_failed=retry_failed, reclaim=reclaim)
            if why is not None:
                return False, why
            shadow = status == "done"
            if not mine:
                self._before[key] = (dict(old) if old is not None else None, None)
            attempts = lease["attempts"] if mine else (old["attempts"] if old is not None else 0) + 1
            created = old["created_at"] if old is not None else now()
            tags = {**(json.loads(old["tags"] or "{}") if old is not None else {}), **(tags or {})}
            if not shadow:
                if old is not None and status != "running":
                    added = db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                                       (key, now(), _json(record_of(old))))
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
                       (key, now(), _json(record_of(row))))
        else:
            if lease["shadow"]:
                db.execute("INSERT INTO history (run_key, replaced_at, record) VALUES (?,?,?)",
                           (key, now(), _json(record_of(old))))
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

