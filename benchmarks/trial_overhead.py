"""A search trial's cost beyond its optimizer steps: start-up, model load, tokenisation, evaluation (issue 25 §2).

    python benchmarks/trial_overhead.py                    # 3 trials of MiniLM LoRA QV on SST-2, 300 steps each
    python benchmarks/trial_overhead.py --trials 4 --steps 300 --selection-size 500

Runs ``--trials`` full-budget trials (learning rates spread over LoRA's prior) one after the other in this process,
through the sweep's in-process executor — exactly how a ``search:`` block runs a trial: claim the key in a store,
train, score the selection split and dev, store the record — on an empty store and the user's token cache (a
search's trials share it; ``--fresh-cache``: an empty one, the first trial then tokenises the train split). Each
trial's wall time (around the executor call) is split into its optimizer steps (the record's ``train_s``) and the
rest. The first trial also pays the process's imports and the first model load; the figure a search pays per trial
is the later trials' median. Target: the rest under 15 % of the trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from _common import machine, table

from efficientft.config import RunConfig
from efficientft.resolve import resolve, run_key
from efficientft.store import Store

TARGET = 0.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--selection-size", type=float, default=500, help="the selection split (count or fraction)")
    ap.add_argument("--max-eval", type=int, default=None, help="cap on dev examples (default: the whole dev set)")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="an empty token cache (the first trial then tokenises the whole train split)")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    t_start = time.perf_counter()
    from efficientft.sweep.executors import InProcess

    with tempfile.TemporaryDirectory(prefix="eft-trial-") as tmp:
        if a.fresh_cache:
            os.environ["EFT_CACHE_DIR"] = os.path.join(tmp, "cache")  # nothing tokenised earlier is reused
        store = Store(os.path.join(tmp, "trials.sqlite"))
        executor = InProcess(str(store.path))
        rows, fractions = [], []
        lrs = [1e-4 * (30 ** (i / max(1, a.trials - 1))) for i in range(a.trials)]  # over LoRA's prior 1e-4..3e-3
        for i, lr in enumerate(lrs):
            cfg = resolve(RunConfig(task=a.task, model="minilm", method="lora", targets="qv",
                                    method_args={"rank": 8}, lr=lr, steps=a.steps, batch_size=a.batch_size,
                                    max_length=a.max_length, selection_size=a.selection_size,
                                    max_eval=a.max_eval, progress=False))
            key = run_key(cfg)
            t0 = time.perf_counter()
            executor.run([{"key": key, "config": cfg.to_dict(), "tags": {"trial": i}, "describe": key}],
                         lambda out: None)
            wall = time.perf_counter() - t0 + (t0 - t_start if i == 0 else 0.0)  # the first pays the imports
            rec = store.get(key)
            if rec is None or rec["status"] != "done":
                sys.exit(f"trial {i} did not finish: {rec and rec.get('error')}")
            c = rec["cost"]
            train = c["train_s"]
            fractions.append((wall - train) / wall)
            rows.append([i, f"{lr:.2g}", f"{wall:.1f}", f"{train:.1f}", f"{c.get('setup_s', 0):.1f}",
                         f"{c.get('eval_s', 0):.1f}", f"{wall - train:.1f}", f"{(wall - train) / wall:.1%}"])
            print(f"trial {i}: wall {wall:.1f} s, optimizer steps {train:.1f} s, rest {(wall - train) / wall:.1%}",
                  flush=True)
        executor.close()
    print(table(["trial", "lr", "wall s", "optimizer steps s", "set-up s", "eval s", "rest s", "rest / wall"], rows))
    later = fractions[1:] or fractions
    med = statistics.median(later)
    print(f"\n{a.task}, {a.steps} steps of batch {a.batch_size}: a trial's cost beyond its optimizer steps is "
          f"{med:.1%} of the trial (median of trials 1..{len(fractions) - 1}; the first, with the process's imports "
          f"and first model load: {fractions[0]:.1%}); target < {TARGET:.0%}: {'met' if med < TARGET else 'NOT met'}.")


if __name__ == "__main__":
    main()
