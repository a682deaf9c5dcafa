"""The Ray executor, for real: a local ``ray.init(num_cpus=2)``, a tiny sweep, results written by the driver."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from efficientft.store import Store
from efficientft.sweep import load_suite
from efficientft.sweep.runner import SweepOptions, environment, sweep

ray = pytest.importorskip("ray")


def test_ray_sweep_writes_the_same_store_and_skips_done_runs(tmp_path: Path, tiny_bert, glue_dir):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(f"""
name: ray-tiny
defaults: {{task: rte, model: {tiny_bert}, steps: 5, batch_size: 8, max_train: 32, max_eval: 32, max_length: 48}}
grid: {{seed: [0, 1]}}
methods:
  - {{method: lora, targets: qv, lr_ratio: 4, method_args: {{rank: 4}}, lr: [1.0e-3, 1.0e-2]}}
selection: {{selection_size: 16, over: [lr]}}
""")
    suite = load_suite(suite_file)
    ray_store, local_store = Store(tmp_path / "ray.sqlite"), Store(tmp_path / "local.sqlite")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}})
    try:
        lines: list[str] = []
        s = sweep(suite, ray_store, SweepOptions(executor="ray", env=environment()), log=lines.append)
        assert s["executor"] == "ray" and s["outcomes"] == {"done": 4} and s["steps_trained"] == 20
        again = sweep(suite, ray_store, SweepOptions(executor="ray", env=environment()), log=lines.append)
        assert again["outcomes"] == {"skipped (done)": 4}
    finally:
        ray.shutdown()
    runs = {r["run_key"]: r for r in ray_store.runs()}
    assert len(runs) == 4 and all(r["status"] == "done" and r["attempts"] == 1 for r in runs.values())
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert all(r["worker"] != me for r in runs.values())  # trained in Ray worker processes
    assert all(r["tags"]["suite"] == "ray-tiny" and r["provenance"]["data_files"] for r in runs.values())
    for k in runs:  # the curves came back with the records
        assert len([c for c in ray_store.curves(k) if c[2] == "loss"]) == 5
    # the same runs in this process give the same scores: Ray changes where runs train, not what they compute
    sweep(suite, local_store, SweepOptions(env=environment()), log=lines.append)
    for r in local_store.runs():
        assert runs[r["run_key"]]["scores"] == pytest.approx(r["scores"])
    assert [row["chosen"] for row in s["selection"]["selection"]] == \
        [row["chosen"] for row in sweep(suite, local_store, SweepOptions(env=environment()),
                                        log=lines.append)["selection"]["selection"]]
