"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .learned import run_learned
from .values import NOT_A_NUMBER, number, show


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A fixed-width table; numbers right-aligned unless ``align`` (one of 'l'/'r' per column) says otherwise."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) and not isinstance(rows[0][i], bool)
                        else "l" for i in range(len(headers)))

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align, strict=True))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]).rstrip()


RUN_HEADERS = ("run", "status", "task", "method", "targets", "λ", "rank", "lr", "seed", "metric", "score",
               "baseline", "learned?", "trainable", "peak MB", "step ms", "wall s")


def run_row(rec: dict) -> list[Any]:
    """One line of ``eft runs`` / ``eft run`` for a stored record (stored text where a number belongs: ``n/a``)."""
    cfg, cost = rec.get("config", {}), rec.get("cost", {}) or {}
    metric = (rec.get("main_metric") or "").split("/")[-1]
    baseline, learned = run_learned(rec)
    return [
        rec["run_key"][:10], rec["status"], cfg.get("task"), cfg.get("method"), cfg.get("targets"),
        show(cfg.get("lr_ratio", 1.0)), (cfg.get("method_args") or {}).get("rank", "-"),
        show(cfg.get("lr", 0)), cfg.get("seed"), metric, _stored(rec.get("main_score")),
        baseline if math.isfinite(baseline) else None, learned_text(learned, rec),
        _stored(cost.get("trainable_params")), _scaled(cost.get("peak_memory_mb"), 1, 0),
        _scaled(cost.get("median_step_s"), 1000, 1), _scaled(cost.get("wall_s"), 1, 1),
    ]


def _stored(v: Any) -> Any:
    """A stored number as itself (an int stays an int for thousands separators), text that is one as a float."""
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
        return v
    f = number(v)
    return NOT_A_NUMBER if math.isnan(f) else f


def _scaled(v: Any, scale: float, digits: int) -> int | str | None:
    """A stored cost ×``scale`` with ``digits`` decimals (whole numbers as ints, for thousands separators)."""
    if v is None:
        return None
    f = number(v)
    if math.isnan(f):
        return NOT_A_NUMBER
    return round(f * scale) if digits == 0 else f"{f * scale:.{digits}f}"


def runs_table(records: Sequence[dict]) -> str:
    return table(RUN_HEADERS, [run_row(r) for r in records], align="llllllrrrlrrlrrrr")


def learned_text(learned: bool | None, rec: dict) -> str:
    """``yes``, ``NO`` (did not beat the trivial baseline), ``NO (collapsed)`` where its predictions were one class
    or a constant on the split of its main score, or ``-`` (no score or no recorded baseline)."""
    if learned is None:
        return "-"
    split = (rec.get("main_metric") or "").split("/")[0].replace("best_dev", "dev")
    collapsed = ((rec.get("details") or {}).get("collapsed") or {}).get(split)
    return "yes" if learned else "NO (collapsed)" if collapsed else "NO"
