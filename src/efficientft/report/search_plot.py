"""The tuning-budget plot of a search (``search:`` block): the best selection-split score found so far against the
optimizer steps the search has spent (every trial's rungs counted), one curve per method, one panel per task. A
method whose curve rises late needs tuning; one that is flat from its first trial does not.

Drawn from the store's runs tagged by :mod:`efficientft.sweep.search` (``tags.search``, ``trial``, ``rung``,
``budget``, ``full_steps``, ``metric``), so ``eft report`` draws it for any store that holds a search.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..vocab import higher_is_better
from .plots import _literal, _panels, _save, _style


def search_curves(records: list[dict]) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """``(search, task, label)`` -> ``[(steps spent, best full-budget selection score so far), ...]``, one point per
    trial run in trial order (NaN until a trial has finished its full budget)."""
    runs = defaultdict(list)
    for r in records:
        t = r.get("tags") or {}
        if t.get("search") is not None and "trial" in t and r.get("status") == "done":
            runs[(t["search"], r["config"].get("task", ""), t.get("label", ""))].append(r)
    out = {}
    for k, rs in runs.items():
        rs.sort(key=lambda r: (r["tags"]["trial"], r["tags"].get("rung", 0)))
        spent, best, pts = 0, math.nan, []
        for r in rs:
            t = r["tags"]
            spent += int(t.get("budget") or 0)
            v = (r.get("scores") or {}).get(t.get("metric", ""))
            if t.get("budget") == t.get("full_steps") and isinstance(v, (int, float)) and math.isfinite(v):
                up = higher_is_better(t["metric"])
                best = v if math.isnan(best) or (v > best if up else v < best) else best
            pts.append((spent, best))
        out[k] = pts
    return out


def tuning_budget(records: list[dict], out: Path, stem: str = "search_budget") -> list[Path]:
    """The plot (PNG and SVG) in ``out``; nothing when no run of ``records`` belongs to a search."""
    curves = search_curves(records)
    if not curves:
        return []
    panels = sorted({(s, task) for s, task, _ in curves})
    fig, axes = _panels(len(panels))
    labels = sorted({label for _, _, label in curves})
    for ax, (search, task) in zip(axes, panels, strict=True):
        metric = ""
        for i, label in enumerate(labels):
            pts = curves.get((search, task, label))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-post", label=label,
                        markersize=3, **_style(i))
        for r in records:
            t = r.get("tags") or {}
            if t.get("search") == search and r["config"].get("task") == task and t.get("metric"):
                metric = t["metric"]
                break
        _literal(ax.set_title(f"{search}: {task}"))
        ax.set_xlabel("tuning budget spent (optimizer steps, all trials)")
        ax.set_ylabel(f"best {metric} so far")
        _literal(*ax.legend(fontsize="small", frameon=False).get_texts())
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out, stem)
