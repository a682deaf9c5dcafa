"""A search's wall time with its configurations one at a time against side by side (``--workers N``: N lanes).

    python benchmarks/search_lanes.py                       # MiniLM SST-2, LoRA QV and QKV, --workers 1 then 2
    python benchmarks/search_lanes.py --trials 4 --steps 120 --workers 2

Writes a search suite (two configurations: LoRA r=8 on Q,V and on Q,K,V; ``--trials`` TPE trials each with
successive halving, one final seed) and runs it twice through ``eft sweep``'s code, each time on an empty store: in
this process (``--workers 1``: configuration after configuration) and on ``--workers`` one-process lanes (the
configurations side by side). Prints both wall times, the speed-up, and whether both chose the same learning rates
(they must: each configuration's study is the same). One at a time, a run has every core's threads; side by side,
each lane has its share (``cores // workers``), so the speed-up is what N one-thread runs gain over one N-thread run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import machine, table

from efficientft.store import Store
from efficientft.sweep.options import SweepOptions, environment
from efficientft.sweep.runner import sweep
from efficientft.sweep.suite import load_suite

SUITE = """name: lanes-benchmark
defaults: {{model: minilm, task: {task}, steps: {steps}, batch_size: 16, max_length: 64, max_train: 2000,
           max_eval: 300}}
methods:
  - {{label: "LoRA QV", method: lora, targets: qv, method_args: {{rank: 8}}}}
  - {{label: "LoRA QKV", method: lora, targets: qkv, method_args: {{rank: 8}}}}
selection: {{selection_size: 300}}
search: {{trials: {trials}, seed: 0, final_seeds: 1}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--steps", type=int, default=90)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    rows, chosen = [], {}
    with tempfile.TemporaryDirectory(prefix="eft-lanes-") as tmp:
        suite_path = Path(tmp) / "lanes.yaml"
        suite_path.write_text(SUITE.format(task=a.task, steps=a.steps, trials=a.trials))
        for workers in (1, a.workers):
            store = Store(Path(tmp) / f"w{workers}.sqlite")
            t0 = time.perf_counter()
            summary = sweep(load_suite(suite_path), store, SweepOptions(env=environment(), workers=workers),
                            log=lambda line: None)
            wall = time.perf_counter() - t0
            confs = summary["search"]["configurations"]
            chosen[workers] = [(c["label"], c["chosen"]) for c in confs]
            steps = sum(c["steps_spent"] for c in confs)
            rows.append([workers, len(store.runs()), steps, f"{wall:.1f}"])
            print(f"--workers {workers}: {len(store.runs())} runs in {wall:.1f} s", flush=True)
            rows[-1].append(wall)
    print(table(["workers", "runs", "trial steps", "wall s"], [r[:4] for r in rows]))
    speedup = rows[0][4] / rows[1][4]
    same = chosen[1] == chosen[a.workers]
    print(f"\nside by side on {a.workers} lanes: {speedup:.2f}× faster than one at a time; same choices: "
          f"{'yes' if same else 'NO'} ({chosen[1]}); {os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
