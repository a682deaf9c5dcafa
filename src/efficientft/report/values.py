"""Stored values read as numbers, in one place.

A store's records come from many writers (this process, Ray workers' imports, older versions, hand edits), and
SQLite keeps whatever text it is given in a REAL column. Every figure a report computes or shows goes through
:func:`number`, so text, ``None``, booleans and NaN/∞ are "not a number" everywhere alike: never averaged, never
sorted as a number, never written raw into markup, and shown as ``n/a`` (missing values stay ``–``).
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"
NOT_A_NUMBER = "n/a"


def score_scale(metric: str, higher: bool) -> float:
    """Scores are shown ×100 (as in the report's table); a lower-is-better metric (a loss) as it is."""
    return 100.0 if higher else 1.0


def number(v: Any) -> float:
    """``v`` as a finite float (numbers and numeric text), else NaN. Booleans are flags, not numbers."""
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return math.nan
    elif hasattr(v, "item"):  # a numpy scalar
        return number(v.item())
    else:
        return math.nan
    return f if math.isfinite(f) else math.nan


def show(v: Any, digits: int | None = None) -> str:
    """A value that should be a number, for display: ``–`` when absent (None, or a computed NaN/∞ such as the
    spread of one seed), ``n/a`` when it is something else (text, a flag), else ``digits`` decimals (``:g`` when
    None; integers keep their digits)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    f = number(v)
    if math.isnan(f):
        return NOT_A_NUMBER
    if digits is not None:
        return f"{f:.{digits}f}"
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 and not isinstance(v, float) else f"{f:g}"


def sort_key(v: Any) -> str:
    """A number's canonical text for a machine-readable sort key (``data-sort``); empty when not a number."""
    f = number(v)
    return "" if math.isnan(f) else repr(f)


def order_key(v: Any) -> tuple:
    """A total order over mixed values: numbers by value, then anything else by its text; tuples element-wise."""
    if isinstance(v, tuple):
        return (1, tuple(order_key(x) for x in v))
    f = number(v)
    return (0, (0, f, "")) if not math.isnan(f) else (0, (1, 0.0, str(v)))
