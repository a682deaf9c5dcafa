"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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
               "trainable", "peak MB", "step ms", "wall s")


def run_row(rec: dict) -> list[Any]:
    """One line of ``eft runs`` / ``eft run`` for a stored record."""
    cfg, cost = rec.get("config", {}), rec.get("cost", {}) or {}
    step = cost.get("median_step_s")
    metric = (rec.get("main_metric") or "").split("/")[-1]
    return [
        rec["run_key"][:10], rec["status"], cfg.get("task"), cfg.get("method"), cfg.get("targets"),
        f"{float(cfg.get('lr_ratio', 1.0)):g}", (cfg.get("method_args") or {}).get("rank", "-"),
        f"{cfg.get('lr', 0):g}", cfg.get("seed"), metric, rec.get("main_score"), cost.get("trainable_params"),
        round(cost["peak_memory_mb"]) if cost.get("peak_memory_mb") else None,
        f"{step * 1000:.1f}" if step is not None and math.isfinite(step) else None,
        f"{cost['wall_s']:.1f}" if cost.get("wall_s") else None,
    ]


def runs_table(records: Sequence[dict]) -> str:
    return table(RUN_HEADERS, [run_row(r) for r in records], align="llllllrrrlrrrrr")
