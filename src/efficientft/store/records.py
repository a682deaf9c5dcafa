"""Reading the store's records (a run, the runs, history, curves, predictions) and the log of sweeps."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..errors import ConfigError
from .liveness import now
from .policy import STATUSES
from .rows import _clean, _json, record_of


class Records:
    """The reading half of :class:`~efficientft.store.Store` (and the sweeps' log)."""

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
        return record_of(row) if row is not None else None

    def find(self, prefix: str) -> dict | None:
        """A run by its key or an unambiguous prefix of it (taken literally: not a LIKE pattern, where ``_`` and
        ``%`` match anything and case is ignored)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE substr(run_key, 1, ?) = ? LIMIT 2",
                              (len(prefix), prefix)).fetchall()
        return record_of(rows[0]) if len(rows) == 1 else None

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
        return [record_of(r) for r in rows]

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

