"""Model selection over stored runs, and the successive-halving rule of early stopping.

Two conventions, always labelled:

- ``selection`` (the fair one): per method configuration, the learning rate (or whatever ``over`` names) with the
  best *mean* score over seeds (the highest, or the lowest for a lower-is-better metric such as ``lm_loss``) on a selection split carved from train (seeded, ``selection_size``); reported is
  that choice's final score on the official dev split, mean ± std over seeds. The dev split is never looked at
  to choose.
- ``best_dev`` (what most papers report): the best (maximum, or minimum for a loss) over learning rates of the mean over seeds of the best dev
  score over evaluation points (``best_dev/<metric>``, stored by every run). It chooses *and* reports on dev, so
  it is optimistic; it is offered for comparison with published tables, labelled as such.

Successive halving (Jamieson & Talwalkar 2016, arXiv 1502.07943; the synchronous form of ASHA, Li et al. 2018,
arXiv 1810.05934): every candidate trains ``rungs[0]`` steps, the best ``1/η`` by selection score go on to the
next rung, and the survivors of the last rung train the full budget. :func:`halving` is the rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from ..choice import best, mean_score, score, scores
from ..config import ENVIRONMENT_FIELDS
from ..vocab import higher_is_better

CONVENTIONS = {
    "selection": "chosen by the mean selection-split score over seeds (split carved from train); reported: the "
                 "final dev score of that choice, mean ± std over seeds",
    "best_dev": "best dev score: the max over choices of the mean over seeds of the best dev score over "
                "evaluation points (chosen and reported on dev; optimistic, as in most papers)",
}


def group_of(config: dict[str, Any], over: Iterable[str]) -> str:
    """A stable id of a run's method configuration: its identity without ``over``, the seed and environment."""
    ident = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()
             if k not in ENVIRONMENT_FIELDS and k != "seed"}
    for name in over:
        top, _, sub = str(name).partition(".")
        if sub:
            if isinstance(ident.get(top), dict):
                ident[top].pop(sub, None)
        else:
            ident.pop(top, None)
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def over_values(config: dict[str, Any], over: Iterable[str]) -> tuple:
    out = []
    for name in over:
        top, _, sub = str(name).partition(".")
        out.append((config.get(top) or {}).get(sub) if sub else config.get(top))
    return tuple(out)


def metric_names(record: dict, by: str, convention: str) -> tuple[str, str]:
    """(metric that chooses, metric that is reported) for one record; ``main`` means the task's main metric."""
    main = (record.get("main_metric") or "dev/accuracy").split("/", 1)[1]
    if convention == "best_dev":
        return f"best_dev/{main}", f"best_dev/{main}"
    if convention != "selection":
        raise ValueError(f"unknown convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    choose = f"selection/{main}" if by == "main" else by
    return choose, f"dev/{main}"


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std, n and the 95% confidence half-width (Student t) of per-seed scores."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = None
    if n > 1:
        from scipy.stats import t

        ci = float(t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "n": n, "ci95": ci}


def select(records: Iterable[dict], by: str = "main", over: Sequence[str] = ("lr",),
           convention: str = "selection") -> list[dict]:
    """One row per method configuration (records grouped by :func:`group_of`): the chosen ``over`` values and
    the reported score over seeds, under the named convention (:data:`CONVENTIONS`).

    Only ``done`` records count. A row whose group has no score to choose by (no selection split) has
    ``chosen`` None and says why in ``note``.
    """
    over = tuple(over)
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") == "done":
            groups.setdefault(group_of(r["config"], over), []).append(r)
    rows = []
    for gid, recs in groups.items():
        choose_m, report_m = metric_names(recs[0], by, convention)
        cands: dict[tuple, list[dict]] = {}
        for r in sorted(recs, key=lambda r: (json.dumps(over_values(r["config"], over), default=str),
                                             r["config"].get("seed", 0))):
            cands.setdefault(over_values(r["config"], over), []).append(r)
        table = []
        for values, rs in cands.items():
            table.append({"values": dict(zip(over, values, strict=True)),
                          "select_mean": mean_score(rs, choose_m), "n_select": len(scores(rs, choose_m)),
                          "report": summarise(scores(rs, report_m)), "seeds": [r["config"].get("seed") for r in rs],
                          "scores": [score(r, report_m) for r in rs], "keys": [r["run_key"] for r in rs]})
        first = recs[0]
        cfg = first["config"]
        row = {
            "group": gid, "label": (first.get("tags") or {}).get("label") or f"{cfg.get('method')} {cfg.get('targets')}",
            "task": cfg.get("task"), "method": cfg.get("method"), "targets": cfg.get("targets"),
            "lr_ratio": cfg.get("lr_ratio"), "method_args": cfg.get("method_args"), "model": cfg.get("model"),
            "convention": convention, "convention_text": CONVENTIONS[convention], "selected_by": choose_m,
            "reported": report_m, "over": list(over), "candidates": table, "chosen": None, "note": "",
        }
        chosen = best({i: c["select_mean"] for i, c in enumerate(table)}, choose_m)  # first of equals, in order
        if chosen is None:
            row["note"] = f"no {choose_m} scores: these runs had no selection split (suite selection: block)"
        else:
            best_ = table[chosen]
            row.update(chosen=best_["values"], select_score=best_["select_mean"], seeds=best_["seeds"],
                       scores=best_["scores"], keys=best_["keys"], **best_["report"])
        rows.append(row)
    rows.sort(key=lambda r: (str(r["task"]), str(r["label"]), r["group"]))
    return rows


def halving(scores: dict[Any, float | None], eta: float, metric: str) -> list[Any]:
    """Successive halving: the best ``max(1, floor(n / η))`` candidates by their score of ``metric`` (the highest,
    or the lowest for a lower-is-better metric; missing scores rank last; among equal scores the earlier candidate
    wins)."""
    keep = max(1, math.floor(len(scores) / eta))
    sign = 1.0 if higher_is_better(metric) else -1.0
    order = sorted(enumerate(scores.items()),
                   key=lambda x: (x[1][1] is None, -sign * (x[1][1] if x[1][1] is not None else 0.0), x[0]))
    return [c for _, (c, _) in order[:keep]]
