"""A run's row and record: JSON encoding of the columns (NaN as null), a fresh ``runs`` row, the record read back."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

_JSON_COLUMNS = ("config", "scores", "cost", "provenance", "details", "tags")


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


def record_of(row: sqlite3.Row | dict) -> dict:
    """A stored row as a record: its JSON columns decoded."""
    rec = dict(row)
    for c in _JSON_COLUMNS:
        rec[c] = json.loads(rec[c]) if rec.get(c) else {}
    return rec
