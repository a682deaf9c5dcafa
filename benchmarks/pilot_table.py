"""The budget pilot's table (issue 25): per run of a pilot store, the selection-split score at each evaluation point,
the dev score at the end, the trivial baseline the run recorded and the measured seconds per step (the pilot's own:
a loaded machine's figures are no guide to an idle one's; the suites' estimate: blocks hold the idle figures).

    eft sweep pilot --store pilot.sqlite             # the shipped pilot suite (LoRA Q,V r=8, scored every 100 steps)
    python benchmarks/pilot_table.py pilot.sqlite    # the Markdown table of src/efficientft/suites/pilot.md

The baseline is what the run recorded for dev (``details.baselines``: the majority class's accuracy, 0 for MCC and
correlations, which a constant prediction scores). "Clearly above from": the first evaluation point from which the
selection score stays above the baseline by the margin (5 points of accuracy, 0.2 of MCC or Pearson r); "90 % of
its gain from": the first from which it stays at 90 % or more of what it gained over the baseline by the pilot's
end. The budget a study suite gives the task is 1.2 × the latter, rounded up to 100 steps, where the run clearly
learned: its selection score cleared the margin and so did its dev score at the end ("–": it did not, at this
learning rate; a selection split carved from train can clear the margin while dev stays at chance, as RTE did).
"""

from __future__ import annotations

import math
import sys

from efficientft.store import Store

MARGIN = {"accuracy": 0.05, "mcc": 0.2, "pearson": 0.2}
# for records stored before runs recorded their baselines (issue 25): the majority class's share of each GLUE dev
# split (SST-2 444/872, MRPC 279/408, RTE 146/277); MCC and Pearson r of a constant prediction are 0
DEV_BASELINE = {"sst2": 0.5092, "mrpc": 0.6838, "rte": 0.5271}


def rows(store: Store) -> list[dict]:
    out = []
    for r in store.runs("done"):
        cfg, scores = r["config"], r["scores"]
        metric = next(k.split("/", 1)[1] for k in ("dev/mcc", "dev/pearson", "dev/accuracy") if k in scores)
        curve = {step: v for kind, step, name, v in store.curves(r["run_key"])
                 if kind == "eval" and name == f"selection/{metric}"}
        curve[cfg["steps"]] = scores[f"selection/{metric}"]
        base = ((r.get("details") or {}).get("baselines") or {}).get(f"dev/{metric}")
        if base is None:
            base = DEV_BASELINE.get(cfg["task"], 0.0) if metric == "accuracy" else 0.0
        margin = MARGIN.get(metric, 0.05)
        steps = sorted(curve)
        clear = next((s for i, s in enumerate(steps) if all(curve[t] >= base + margin for t in steps[i:])), None)
        gain = curve[steps[-1]] - base  # what the pilot's run gained over the baseline by its end
        near = next((s for i, s in enumerate(steps) if all(curve[t] >= base + 0.9 * gain for t in steps[i:])), None)
        dev = scores[f"dev/{metric}"]
        learned = clear is not None and near is not None and dev >= base + margin
        budget = math.ceil(1.2 * near / 100) * 100 if learned else None
        out.append({"task": cfg["task"], "lr": cfg["lr"], "steps": cfg["steps"], "metric": metric, "baseline": base,
                    "curve": curve, "clear": clear, "near": near, "budget": budget, "dev": dev,
                    "dev_learned": dev >= base + margin, "step_s": (r.get("cost") or {}).get("mean_step_s")})
    return sorted(out, key=lambda x: (x["task"], x["lr"], x["steps"]))


def markdown(table: list[dict]) -> str:
    points = sorted({s for x in table for s in x["curve"]})
    lines = ["| task | lr | steps | metric | baseline (dev) | selection score at step " + " / ".join(map(str, points))
             + " | clearly above from | 90 % of its gain from | dev at the end | s/step | budget |", "|---" * 11 + "|"]
    for x in table:
        pts = " / ".join(f"{100 * x['curve'][s]:.1f}" if s in x["curve"] else "–" for s in points)
        dev = f"{100 * x['dev']:.1f}" + ("" if x["dev_learned"] else " (not above the margin)")
        step_s = f"{x['step_s']:.2f}" if x.get("step_s") else "–"
        lines.append(f"| {x['task']} | {x['lr']:g} | {x['steps']} | {x['metric']} | {100 * x['baseline']:.1f} | {pts} | "
                     f"{x['clear'] or 'never'} | {x['near']} | {dev} | {step_s} | {x['budget'] or '–'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(rows(Store(sys.argv[1] if len(sys.argv) > 1 else "pilot.sqlite", readonly=True))))
