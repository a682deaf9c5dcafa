"""FSDP (efficientft.sharding): a 2-process sharded run on CPU (gloo) trains as one process does; what it cannot
do is refused with one line before training."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.store import Store
from tests.test_sweep import subprocess_env

ARGS = ["run", "--task", "rte", "--steps", "4", "--max-train", "64", "--max-eval", "32", "--max-length", "48",
        "--batch-size", "8", "--lr", "1e-3", "--max-grad-norm", "0.1", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("method", [["--method", "full", "--targets", "qv", "--lr-ratio", "4"],
                                    ["--method", "lora", "--targets", "qv", "--rank", "4", "--lr-ratio", "4"]],
                         ids=["full", "lora"])
def test_fsdp_on_two_cpu_processes_equals_one_process(tmp_path, tiny_bert_no_dropout, glue_dir, method):
    """``accelerate launch`` with the shipped FSDP config: each process holds half of every parameter, the optimizer
    is built on the shards, and the loss curve, gradient norms (clipping active), λ groups and scores are the
    single-process run's; one record, under the single-process key."""
    from efficientft.sharding import CONFIG

    args = [*ARGS, *method, "--model", str(tiny_bert_no_dropout)]
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    assert main([*args, "--store", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                        "--main_process_port", str(29700 + os.getpid() % 200), "-m", "efficientft.cli", *args,
                        "--store", str(two)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = Store(one).runs(), Store(two).runs()
    assert len(b) == 1 and b[0]["run_key"] == a[0]["run_key"] and b[0]["status"] == "done"
    assert b[0]["cost"]["processes"] == 2
    shards = b[0]["details"]["info"]["sharding"]
    assert shards["kind"] == "fsdp2" and shards["processes"] == 2 and shards["units"] >= 3  # 2 layers + the root
    assert shards["params"] // 2 <= shards["params_per_process"] <= shards["params"] // 2 + 64
    assert "sharding" not in a[0]["details"]["info"]
    assert b[0]["details"]["groups"] == a[0]["details"]["groups"]  # λ: W_v's group at 4x, as unsharded
    assert [g["lr_scale"] for g in b[0]["details"]["groups"]] == [1.0, 4.0]

    def curve(store: Store, name: str) -> list[float]:
        return [v for _, _, n, v in store.curves(a[0]["run_key"]) if n == name]

    assert len(curve(Store(two), "loss")) == 4
    for name in ("loss", "grad_norm"):
        assert curve(Store(two), name) == pytest.approx(curve(Store(one), name), rel=1e-5)
    assert max(curve(Store(one), "grad_norm")) > 0.1  # clipping acted, on sharded gradients too
    assert b[0]["scores"] == pytest.approx(a[0]["scores"])


class FakeAccelerator:
    num_processes, is_main_process, device = 2, True, torch.device("cpu")

    def __init__(self, cpu: bool) -> None:
        self.cpu = cpu


@pytest.fixture
def two_processes(monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "FSDP_OFFLOAD_PARAMS",
                "FSDP_ACTIVATION_CHECKPOINTING"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_an_fsdp_launch_builds_a_sharded_runtime(two_processes):
    from efficientft.runtime import build_runtime

    assert not build_runtime(RunConfig(device="cpu", batch_size=8), world_size=2).sharded
    two_processes.setenv("ACCELERATE_USE_FSDP", "true")
    assert build_runtime(RunConfig(device="cpu", batch_size=8), world_size=2).sharded


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launches are not supported; for a model that does not fit "
                                           "one device use FSDP"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP version 1 is not supported; set fsdp_version: 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"},
     "the accelerate config's fsdp_offload_params is not supported here; drop fsdp_offload_params."),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
     "fsdp_activation_checkpointing is not supported here; use --gradient-checkpointing instead."),
])
def test_launches_this_loop_cannot_shard_are_refused(two_processes, env, message):
    from efficientft.runtime import build_runtime

    for k, v in env.items():
        two_processes.setenv(k, v)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_runtime(RunConfig(device="cpu", batch_size=8), world_size=2)


def test_step_checkpoints_are_refused_in_a_multi_process_launch(two_processes):
    """An explicit --checkpoint-every in a DDP or FSDP launch is refused, not silently ignored; the default and 0
    (off) are accepted."""
    from efficientft.runtime import build_runtime

    for fsdp in ("false", "true"):
        two_processes.setenv("ACCELERATE_USE_FSDP", fsdp)
        with pytest.raises(ConfigError, match=r"--checkpoint-every is not supported in a 2-process launch \(step "
                                              r"checkpoints are single-process only\)"):
            build_runtime(RunConfig(device="cpu", batch_size=8, checkpoint_every=5), world_size=2)
        build_runtime(RunConfig(device="cpu", batch_size=8, checkpoint_every=0), world_size=2)


@pytest.mark.parametrize("changes, message", [
    ({"method": "sift"}, "method 'sift' has not been made to run under FSDP. Methods that can: full, lora; or "
                         "launch without FSDP."),
    ({"precision": "fp16"}, "--precision fp16 (the GradScaler is not shard-aware; use bf16) is not supported"),
    ({"feature_cache": True}, "--feature-cache is not supported under FSDP."),
    ({"export_dir": "out"}, "--export-dir (it would need the full weights gathered) is not supported under FSDP."),
])
def test_what_a_sharded_run_cannot_do_is_refused_before_loading(tiny_bert, changes, message):
    from efficientft.methods import get_method
    from efficientft.sharding import check_config

    cfg = RunConfig(model=str(tiny_bert), **{"method": "full", **changes})
    method = get_method(cfg.method).from_config(cfg.method_args)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_config(cfg, method, cfg.precision)


def test_a_refused_launch_is_one_line_and_exit_2_on_every_process(tmp_path, tiny_bert):
    """Through the CLI under torchrun: the refusal is the CLI's one line on each rank, exit 2, before training."""
    from tests.conftest import ROOT

    env = {**subprocess_env(), "PYTHONPATH": str(ROOT / "src"), "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29600 + os.getpid() % 100), "-m", "efficientft.cli", "run", "--model", str(tiny_bert),
                        "--task", "rte", "--steps", "1", "--max-train", "8", "--max-eval", "8", "--device", "cpu",
                        "--no-progress", "--store", str(tmp_path / "r.sqlite")],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.stderr.count("eft run: error: FSDP version 1 is not supported; set fsdp_version: 2") == 2
    assert "(exitcode: 2)" in r.stderr and r.returncode != 0  # each rank exits 2; the traceback is torchrun's own
    assert "efficientft/" not in r.stderr  # no traceback through our code
    assert not (tmp_path / "r.sqlite").exists() or not Store(tmp_path / "r.sqlite").runs()
