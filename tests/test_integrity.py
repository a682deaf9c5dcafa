"""Integrity of the loop's numbers: accumulation weights, the lr curve, fp16 skipped steps.

Each test pins a number the loop once got silently wrong: a short last micro-batch counted as much as a full one,
the lr curve was shifted by one step, and a step the fp16 GradScaler skipped still advanced the schedule and ran
AdaLoRA's reallocation on inf gradients (it then never pruned).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientft.cli import main
from efficientft.data import collate
from efficientft.step import accumulate, optimizer_step
from efficientft.store import Store
from efficientft.train import prepare, run, schedule_fn, train
from tests.conftest import tiny_config


def _grads(model):
    return {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None}


# ---------------------------------------------------------------------------------------------- accumulation
def test_accumulated_gradient_on_uneven_micro_batches_equals_the_full_batch_gradient(tiny_bert):
    p = prepare(tiny_config(tiny_bert, method="full", targets="all", max_train=20, batch_size=8))
    p.model.eval()  # no dropout: the two computations must see the same function
    idx = list(range(20))
    full = [(idx, collate(p.train, idx, p.info["pad_id"]))]
    micro = [(i, collate(p.train, i, p.info["pad_id"])) for i in (idx[:8], idx[8:16], idx[16:])]  # 8, 8, 4

    want_loss = accumulate(p, full, 1)
    want = _grads(p.model)
    p.optimizer.zero_grad(set_to_none=True)
    got_loss = accumulate(p, micro, 1)
    got = _grads(p.model)

    assert got_loss == pytest.approx(want_loss, rel=1e-5)  # the loss curve is the step's mean loss, too
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=n)


def test_data_parallel_with_uneven_shards_equals_one_process(tmp_path, tiny_bert_no_dropout, glue_dir):
    """63 examples, batches of 8: step 8 is the epoch's short batch of 7, split 4 / 3 between two processes. Each
    process's loss counts by its share of the examples (not half each), so the curve is the single-process curve;
    the throughput counts both processes' examples."""
    args = ["run", "--task", "rte", "--method", "lora", "--targets", "qv", "--rank", "4", "--steps", "8",
            "--max-train", "63", "--max-eval", "16", "--max-length", "48", "--batch-size", "8", "--lr", "1e-2",
            "--model", str(tiny_bert_no_dropout), "--no-progress", "--device", "cpu"]
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    assert main([*args, "--store", str(one)]) == 0
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(root / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(30500 + os.getpid() % 1000), "-m", "efficientft.cli", *args, "--store", str(two)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (a,), (b,) = Store(one).runs(), Store(two).runs()
    loss = lambda db, key: [v for _, _, n, v in Store(db).curves(key) if n == "loss"]  # noqa: E731
    assert loss(two, b["run_key"]) == pytest.approx(loss(one, a["run_key"]), rel=1e-5)
    assert b["cost"]["examples_trained"] == a["cost"]["examples_trained"] == 63
    assert b["cost"]["tokens_trained"] == a["cost"]["tokens_trained"]


# ---------------------------------------------------------------------------------------------- lr curve
@pytest.mark.parametrize("lr_ratio", [1.0, 0.5])  # λ < 1: W_v's group comes first and runs at half the rate
def test_lr_curve_is_the_lr_each_step_used(tiny_bert, lr_ratio):
    total, warmup_ratio, lr = 10, 0.3, 1e-3
    p = prepare(tiny_config(tiny_bert, steps=total, warmup_ratio=warmup_ratio, lr=lr, schedule="linear",
                            lr_ratio=lr_ratio))
    used = []  # the base rate each optimizer step ran with (the rate of the groups at factor 1)
    p.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(
        next(g["lr"] for g in opt.param_groups if g["lr_scale"] == 1.0)))
    out = train(p, progress=False)
    curve = [(s, v) for kind, s, n, v in out["curve"] if n == "lr"]
    assert [s for s, _ in curve] == list(range(1, total + 1))
    assert [v for _, v in curve] == pytest.approx(used)
    f = schedule_fn("linear", 3, total)
    assert [v for _, v in curve] == pytest.approx([lr * f(s - 1) for s in range(1, total + 1)])
    assert curve[0][1] == pytest.approx(lr / 3)  # the first warm-up step, not the second


# ---------------------------------------------------------------------------------------------- fp16 skipped steps
def _inf_gradients_on(p, calls):
    """Make the gradient of the classifier's weight infinite in the given backward calls (1-based)."""
    weight = dict(p.model.named_parameters())[[n for n, q in p.model.named_parameters() if q.requires_grad][-2]]
    count = [0]

    def hook(g):
        count[0] += 1
        return g * float("inf") if count[0] in calls else g

    weight.register_hook(hook)


def test_a_step_the_scaler_skips_is_not_a_step(tiny_bert, store):
    total = 6
    cfg = tiny_config(tiny_bert, precision="fp16", steps=total, warmup_ratio=0.5, device="cpu")
    p = prepare(cfg)
    _inf_gradients_on(p, {2, 3, 6})  # attempts 2, 3 and 6 overflow
    hooks, real = [], p.method.after_step
    p.method.after_step = lambda model, step: (hooks.append(step), real(model, step))[1]
    out = train(p, progress=False)
    assert out["skipped_steps"] == [2, 2, 4]  # the attempts at steps 2 (twice) and 4 were skipped and retried
    assert hooks == list(range(1, total + 1))  # the method's hook ran once per applied step, never on inf grads
    assert p.scheduler.last_epoch == total
    lrs = [v for kind, s, n, v in out["curve"] if n == "lr"]
    f = schedule_fn("linear", 3, total)
    assert lrs == pytest.approx([cfg.lr * f(s) for s in range(total)])
    assert [s for kind, s, n, v in out["curve"] if n == "loss"] == list(range(1, total + 1))


def test_skipped_steps_are_recorded_and_endless_overflow_is_a_divergence(tiny_bert, store, monkeypatch):
    import efficientft.train as T

    cfg = tiny_config(tiny_bert, precision="fp16", steps=3, device="cpu")
    real_prepare = T.prepare

    def overflowing(c, runtime=None, resume=None):
        p = real_prepare(c, runtime, resume)
        _inf_gradients_on(p, set(range(1, 1000)))
        return p

    monkeypatch.setattr(T, "prepare", overflowing)
    rec = run(cfg, store)
    assert rec["status"] == "diverged"
    assert rec["error"] == (f"gradients were inf or NaN in {T.MAX_SKIPPED_IN_A_ROW} fp16 steps in a row at step 1 "
                            "(the GradScaler skipped them all)")
    assert rec["details"]["diverged_at_step"] == 1
    assert rec["details"]["skipped_steps"] == [1] * T.MAX_SKIPPED_IN_A_ROW


def test_adalora_under_fp16_reaches_its_target_budget(tiny_bert):
    total, r = 12, 2
    cfg = tiny_config(tiny_bert, method="adalora", precision="fp16", steps=total, warmup_ratio=0.0, lr=5e-3,
                      device="cpu", method_args={"rank": r, "tinit": 2, "tfinal": 3})
    p = prepare(cfg)
    _inf_gradients_on(p, {1, 4, 9})
    out = train(p, progress=False)
    assert len(out["skipped_steps"]) == 3
    assert sum(p.method.active_ranks(p.model).values()) == 4 * r  # q and v of 2 layers at the target rank
    E = [q.detach() for n, q in p.model.named_parameters() if ".lora_E." in n]
    assert all(torch.isfinite(e).all() for e in E) and sum(int((e != 0).sum()) for e in E) == 4 * r


def test_optimizer_step_reports_what_the_step_did(tiny_bert):
    p = prepare(tiny_config(tiny_bert, lr=1e-3, warmup_ratio=0.5, steps=4))
    batch = next(iter(p.batches().indexed()))
    result = optimizer_step(p, [batch], 1)
    assert not result.skipped and result.lr == pytest.approx(1e-3 / 2)
    assert result.grad_norm is not None and result.grad_norm > 0  # the norm before clipping (max_grad_norm 1)
