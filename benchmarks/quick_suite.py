"""Wall time of the ``quick`` suite (the README's main job, ``make demo``) end to end, with each run's cost.

    python benchmarks/quick_suite.py                         # the shipped suite quick, one worker
    python benchmarks/quick_suite.py --suite quick --workers 2

Runs ``eft sweep SUITE`` in a fresh process on an empty store and an empty token cache (nothing reused from
earlier runs: what a new user's ``make demo`` costs), times it from start to exit, then reads the store and prints
each run's set-up, training and evaluation time, median step time and peak memory. Target: under 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine, table

from efficientft.errors import ConfigError
from efficientft.store import Store
from efficientft.suites import resolve_suite

TARGET_S = 600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="quick", help="a shipped suite's name or a suite file")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    try:
        resolve_suite(a.suite)
    except ConfigError as e:
        sys.exit(str(e))
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="eft-quick-") as tmp:
        store = os.path.join(tmp, "quick.sqlite")
        env = {**os.environ, "EFT_CACHE_DIR": os.path.join(tmp, "cache"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "efficientft", "sweep", a.suite, "--store", store, "--workers", str(a.workers)]
        print("command:", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        runs = Store(store).runs()
    rows = []
    for r in runs:
        c = r["cost"]
        rows.append([r["config"]["method"], r["config"]["targets"], r["status"], r.get("main_score"),
                     c.get("setup_s"), c.get("train_s"),
                     c.get("eval_s"), c.get("wall_s"), 1e3 * c.get("median_step_s", float("nan")),
                     c.get("peak_rss_mb")])
    in_runs = sum(r["cost"].get("wall_s", 0.0) for r in runs)
    print(f"\n### {os.path.basename(a.suite)}: {len(runs)} runs, {a.workers} worker(s)\n")
    print(table(["method", "targets", "status", "score", "set-up s", "training s", "evaluation s", "run wall s",
                 "median ms/step", "peak RSS MB"], rows))
    print(f"\nsuite wall time {wall:.0f} s ({wall / TARGET_S:.2f} x the 10-minute target); ", end="")
    if a.workers == 1:
        print(f"inside runs {in_runs:.0f} s, the rest ({wall - in_runs:.0f} s) is process start, imports and the "
              "sweep itself.")
    else:  # the runs overlap: their summed wall time over the suite's is the concurrency achieved
        print(f"the runs' wall times add up to {in_runs:.0f} s on {a.workers} workers: {in_runs / wall:.2f} runs "
              "in flight on average.")


if __name__ == "__main__":
    main()
