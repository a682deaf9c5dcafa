"""What ``eft sweep`` prints: the plan (``--dry-run``), and the summary with its model selection tables."""

from __future__ import annotations

from typing import Any

from ..report.text import fmt, table
from .suite import Suite


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_json(p: dict[str, Any]) -> dict[str, Any]:
    """A plan (:func:`~efficientft.sweep.runner.plan`) as JSON-ready values: one row per run."""
    rows = [{"key": x["run"].key, "run": x["run"].describe(), "state": x["state"], "steps": x["steps"],
             "est_s": x["est_s"], "basis": x["basis"], "tags": x["run"].tags} for x in p["runs"]]
    return {**{k: v for k, v in p.items() if k != "runs"}, "runs": rows}


def plan_text(suite: Suite, p: dict[str, Any]) -> str:
    """A plan as ``eft sweep --dry-run`` prints it: one row per run, then the counts and the estimated cost."""
    rows = [[i + 1, x["run"].key[:10], x["state"], x["run"].tags["label"], x["run"].describe(),
             x["steps"] if x["steps"] is not None else "?", _duration(x["est_s"])] for i, x in enumerate(p["runs"])]
    lines = [table(("#", "run", "state", "label", "config", "steps", "est."), rows, align="rllllrr")]
    states = ", ".join(f"{n} {s}" for s, n in sorted(p["states"].items()))
    bases = sorted({x["basis"] for x in p["runs"] if x["state"] in ("new", "rerun")})
    lines.append(f"\nsuite {suite.name}: {p['planned']} runs ({states}); {p['to_run']} to run.")
    steps = f"{p['steps_to_run']:,} optimizer steps" + (f" (+{p['unknown_steps']} runs of unknown length: data "
                                                          f"not found)" if p["unknown_steps"] else "")
    if p["unknown_time"] == p["to_run"] and p["to_run"]:
        time_ = "time unknown (no like runs in the store, no estimate: block in the suite)"
    else:
        time_ = _duration(p["est_s"]) + (f" (+{p['unknown_time']} runs with no timing to go by)"
                                         if p["unknown_time"] else "")
    lines.append(f"estimated cost: {steps}; {time_} in one process (timings from: {', '.join(bases) or '-'}"
                 f"{'; ' + suite.estimate['note'] if suite.estimate.get('note') else ''}).")
    if "early_stopping" in p:
        es = p["early_stopping"]
        lines.append(f"early stopping (rungs {list(suite.rung_budgets)}, η={suite.early_stopping.reduction_factor:g}): "
                     f"{es['steps_early_stopping']:,} steps instead of {es['steps_full_grid']:,} for the full grid.")
    if "search" in p:
        se = p["search"]
        lines.append(f"search: the rows above are its {se['configurations']} configurations (their lr is sampled); "
                     f"{se['trials']} trials, at most {se['steps_trials_at_most']:,} optimizer steps (pruning spends "
                     f"less), then {se['steps_final']:,} steps of final re-runs.")
        if se["unknown_time"] < se["configurations"]:
            hours = lambda s: f"{s / 3600:,.1f} CPU-hours"  # noqa: E731 - one core per worker
            unknown = f" ({se['unknown_time']} configurations with no timing to go by)" if se["unknown_time"] else ""
            lines.append(f"search cost: trials {hours(se['seconds_trials_expected'])} as successive halving expects "
                         f"({se['steps_trials_expected']:,} steps; at most {hours(se['seconds_trials_at_most'])}), "
                         f"final re-runs {hours(se['seconds_final'])}; in all about "
                         f"{hours(se['seconds_trials_expected'] + se['seconds_final'])}{unknown}.")
    return "\n".join(lines)


def summary_text(s: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(s["outcomes"].items()))
    lines = [f"\nsweep {s['sweep_id']} of {s['suite']}: {outcomes or 'nothing to do'} in {_duration(s['wall_s'])}; "
             f"{s['steps_trained']:,} optimizer steps trained."]
    for f in s["failed"]:
        lines.append(f"  {f['key'][:10]} {f['run']}: {f['error'].splitlines()[0] if f['error'] else ''}")
    es = s.get("early_stopping")
    if es:
        saved = es["steps_saved_fraction"]
        lines.append(f"early stopping: {es['steps_early_stopping']:,} optimizer steps vs {es['steps_full_grid']:,} "
                     f"for the full grid" + (f" ({saved:.0%} saved)." if saved is not None else "."))
        same = es.get("same_choice_as_full_grid")
        if same is None:
            lines.append("  same choice as the full grid: not measured (run with --no-early-stopping as well).")
        else:
            lines.append(f"  same choice as the full grid in {sum(same.values())} of {len(same)} groups.")
    if s.get("search"):
        lines += ["", search_table(s["search"])]
    for conv, rows in (s.get("selection") or {}).items():
        if rows:
            lines.append("")
            lines.append(selection_table(rows, conv))
    return "\n".join(lines)


def selection_table(rows: list[dict], convention: str) -> str:
    head = (f"model selection — {convention}: {rows[0]['convention_text']}\n"
            f"(chosen by {rows[0]['selected_by']}, reported {rows[0]['reported']})")
    body = []
    for r in rows:
        chosen = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r["chosen"] or {}).items())
        body.append([r["task"], r["label"], chosen or "-", r.get("mean"), r.get("std"), r.get("n", 0),
                     r.get("select_score"), r["note"]])
    return head + "\n" + table(("task", "label", "chosen", "mean", "std", "n", "select", "note"),
                               [[fmt(c) if isinstance(c, float) else c for c in row] for row in body],
                               align="lllrrrrl")


def search_table(se: dict[str, Any]) -> str:
    """A search's outcome per configuration: its trials, the choice (on the selection split) and its dev score."""
    rows = []
    for c in se["configurations"]:
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (c["chosen"] or {}).items())
        t = c["trials"]
        rows.append([c["task"], c["label"], f"{t['COMPLETE']}/{t['PRUNED']}/{t['FAIL']}", c["steps_spent"],
                     chosen or "-", c["selection_score"], c.get("mean"), c.get("std"), len(c["final"])])
    first = se["configurations"][0] if se["configurations"] else {}
    head = (f"search {se['name']}: {se['trials']} trials per configuration (seed {se['seed']}, eta "
            f"{se['reduction_factor']}); chosen by {first.get('chosen_by', 'selection')}, reported "
            f"{first.get('reported_on', 'dev')} over the final seeds; "
            f"{'Ray Tune state' if se.get('engine') == 'ray-tune' else 'Optuna storage'} {se['storage']}")
    body = table(("task", "configuration", "done/pruned/failed", "steps", "chosen", "selection", "dev mean", "std",
                  "seeds"), rows, align="llrrlrrrr")
    plot = f"\nplot: {se['plot'][0]}" if se.get("plot") else ""
    return f"{head}\n{body}{plot}"
