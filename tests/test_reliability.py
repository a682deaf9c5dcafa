"""Faults are recorded and lose nothing: NaN losses, exceptions, SIGTERM, concurrent writers."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from efficientft.methods import METHODS
from efficientft.methods.lora import LoRA
from efficientft.store import Store
from efficientft.train import run
from tests.conftest import tiny_config


class NaNAfterTwoSteps(LoRA):
    """Fault injection: a method whose update poisons the adapter with NaN after the second step."""

    name = "nan-test"

    def after_step(self, model, step):
        if step == 2:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.fill_(float("nan"))


class Crashes(LoRA):
    name = "crash-test"

    def after_backward(self, model, step):
        raise RuntimeError("simulated out of memory")


def test_nan_loss_is_stored_as_diverged_with_the_step(tiny_bert, store, monkeypatch):
    monkeypatch.setitem(METHODS._items, "nan-test", NaNAfterTwoSteps)
    rec = run(tiny_config(tiny_bert, method="nan-test", steps=6), store)
    assert rec["status"] == "diverged"
    assert rec["details"]["diverged_at_step"] == 3 and "loss became nan at step 3" in rec["error"]
    assert store.get(rec["run_key"])["status"] == "diverged"
    # the curve up to the divergence is kept (finite losses of steps 1 and 2)
    assert [c[1] for c in store.curves(rec["run_key"]) if c[2] == "loss"] == [1, 2]


def test_exception_is_stored_as_failed_with_the_reason(tiny_bert, store, monkeypatch):
    monkeypatch.setitem(METHODS._items, "crash-test", Crashes)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        run(tiny_config(tiny_bert, method="crash-test"), store)
    (rec,) = store.runs()
    assert rec["status"] == "failed" and "RuntimeError: simulated out of memory" in rec["error"]


def test_sigterm_stores_the_run_as_cancelled(tiny_bert, tmp_path):
    db = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "efficientft", "run", "--model", str(tiny_bert), "--task", "rte", "--steps", "100000",
         "--max-train", "32", "--max-eval", "16", "--rank", "2", "--store", str(db), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists() and [r for r in Store(db).runs() if r["status"] == "running"]:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the run never started")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (rec,) = Store(db).runs()
    assert rec["status"] == "cancelled" and "interrupted" in rec["error"]
    assert rec["cost"]["wall_s"] > 0


def _writer(path: str, worker: int, n: int) -> None:
    s = Store(path)
    for i in range(n):
        key = f"w{worker}-{i}"
        s.start(key, {"task": "t", "seed": i})
        s.add_curves(key, [("train", 1, "loss", float(i))])
        s.finish(key, "done", {"dev/accuracy": i / n}, {"wall_s": 0.0}, main_score=i / n)


def test_four_processes_times_fifty_writes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    Store(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    runs = Store(path).runs()
    assert len(runs) == 200 and len({r["run_key"] for r in runs}) == 200
    assert all(r["status"] == "done" for r in runs)
    assert sum(len(Store(path).curves(r["run_key"])) for r in runs) == 200
