"""The loop on tiny models: determinism, learning, precision, and what a stored run records."""

import json
import math
import os

import pytest
import torch

from efficientft.train import prepare, run, schedule_fn
from tests.conftest import tiny_config


def test_same_seed_twice_gives_identical_scores_and_curves(tiny_bert, store):
    cfg = tiny_config(tiny_bert, method="lora", targets="qv", lr_ratio=4, eval_every=2)
    a = run(cfg, store)
    curve_a = store.curves(a["run_key"])
    b = run(cfg.replace(progress=False), store)
    assert a["run_key"] == b["run_key"]
    assert a["scores"] == b["scores"]
    assert curve_a == store.curves(b["run_key"])
    c = run(cfg.replace(seed=1), store)
    losses = lambda k: [v for kind, s, n, v in store.curves(k) if n == "loss"]  # noqa: E731
    assert losses(c["run_key"]) != losses(a["run_key"])


def test_loss_falls_when_overfitting_a_tiny_set(tiny_bert, store):
    cfg = tiny_config(tiny_bert, method="full", targets="all", max_train=8, batch_size=8, steps=30, lr=3e-3,
                      warmup_ratio=0.0, max_grad_norm=None)
    rec = run(cfg, store)
    loss = [v for kind, s, n, v in store.curves(rec["run_key"]) if n == "loss"]
    assert len(loss) == 30
    assert sum(loss[-5:]) / 5 < 0.5 * sum(loss[:5]) / 5


def test_record_contents(tiny_bert, store):
    rec = run(tiny_config(tiny_bert, method="lora", targets="qv", lr_ratio=4, seed=3), store)
    assert rec["status"] == "done"
    cost = rec["cost"]
    # LoRA r=4 on Q and V of 2 layers (hidden 32) + the classifier head
    assert cost["trainable_params"] == 2 * 2 * (4 * 32 * 2) + (32 * 2 + 2)
    assert cost["base_params"] == sum(p.numel() for p in __import__("transformers").AutoModelForSequenceClassification
                                      .from_pretrained(rec["provenance"]["model"]["path"]).parameters())
    assert cost["peak_memory_mb"] > 50 and cost["median_step_s"] > 0 and cost["tokens_per_s"] > 0
    assert cost["total_steps"] == 4 and cost["steps_timed"] == 1
    assert 0 <= rec["scores"]["dev/accuracy"] <= 1 and rec["main_metric"] == "dev/accuracy"
    prov = rec["provenance"]
    assert set(prov) >= {"code", "packages", "hardware", "data_files", "model", "seed"}
    assert all(len(h) == 64 for h in prov["data_files"].values()) and len(prov["data_files"]) == 2
    assert len(prov["model"]["sha256"]) == 64 and prov["seed"] == 3
    assert rec["config"]["lr_ratio"] == 4.0
    lrs = sorted(g["lr"] for g in rec["details"]["groups"])
    assert lrs == [pytest.approx(1e-3), pytest.approx(4e-3)]


def test_llama_runs_with_last_token_pooling(tiny_llama, store):
    rec = run(tiny_config(tiny_llama, method="lora", targets="qkv", task="sst2"), store)
    assert rec["status"] == "done" and rec["details"]["info"]["is_decoder"]


def test_regression_task(tiny_bert, store):
    rec = run(tiny_config(tiny_bert, method="lora", task="stsb"), store)
    assert set(rec["scores"]) >= {"dev/pearson", "dev/spearman"} and rec["main_metric"] == "dev/pearson"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions(tiny_bert, precision, store):
    rec = run(tiny_config(tiny_bert, precision=precision), store)
    assert rec["status"] == "done" and math.isfinite(rec["scores"]["dev/accuracy"])


def test_gradient_accumulation_sees_more_examples(tiny_bert):
    p = prepare(tiny_config(tiny_bert, grad_accum=2, steps=None, epochs=1))
    assert p.total_steps == 2  # 32 examples / batch 8 = 4 micro-batches = 2 optimizer steps


def test_schedules():
    lin = schedule_fn("linear", 2, 10)
    assert [lin(s) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    cos = schedule_fn("cosine", 0, 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert schedule_fn("constant", 1, 10)(9) == 1.0


def test_selection_split_is_scored(tiny_bert, store):
    rec = run(tiny_config(tiny_bert, selection_size=16), store)
    assert "selection/accuracy" in rec["scores"] and rec["details"]["info"]["eval_examples"]["selection"] == 16


def test_divergence_is_stored(tiny_bert, store, monkeypatch):
    cfg = tiny_config(tiny_bert)
    p = prepare(cfg)
    real = type(p.model).forward

    def nan_forward(self, *a, **k):
        out = real(self, *a, **k)
        out.loss = out.loss * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(type(p.model), "forward", nan_forward)
    rec = run(cfg, store)
    assert rec["status"] == "diverged" and rec["details"]["diverged_at_step"] == 1
    assert "loss became nan at step 1" in rec["error"]


def test_each_run_records_whether_it_was_first_in_its_process(tiny_bert, tmp_path):
    """Peak memory depends on it (a process's peak RSS never goes down): ``details.fresh_process`` is true for the
    first run of a process (``eft run``, a sweep with --fresh-process) and false for the runs after it."""
    import subprocess
    import sys

    code = ("import json, sys; from efficientft.store import Store; from efficientft.train import run; "
            "from tests.conftest import tiny_config; s = Store(sys.argv[2]); "
            "print(json.dumps([run(tiny_config(sys.argv[1], seed=k, steps=1), s)['details']['fresh_process'] "
            "for k in (0, 1)]))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bert), str(tmp_path / "s.sqlite")], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, False]
