"""What every method that declares ``grows`` (adds parameters while it trains) shares: refused where the parameters
must be known when training starts (a data-parallel wrapper, torch.compile), in one line, before a model loads."""

import dataclasses
from types import SimpleNamespace

import pytest

import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.runtime import build_runtime
from efficientft.train import prepare
from tests.conftest import tiny_config

GROWING = [n for n in METHODS.names() if METHODS.get(n).capabilities.grows]


def test_the_growing_methods_are_known():
    assert {"increlora", "triadaptlora"} <= set(GROWING)


@pytest.mark.parametrize("name", GROWING)
def test_a_data_parallel_run_is_refused_before_a_model_loads(name, tiny_bert, monkeypatch):
    """Each process's DDP wrapper holds the parameters it started with: what a growth adds would not be averaged."""
    cfg = tiny_config(tiny_bert, method=name, method_args=METHODS.get(name).test_args() or {}, steps=12)
    runtime = dataclasses.replace(build_runtime(cfg), accelerator=SimpleNamespace(num_processes=2))
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError) as e:
        prepare(cfg, runtime)
    assert str(e.value) == (f"method {name!r} adds parameters during training, which a 2-process run cannot "
                            "follow (its data-parallel wrapper holds the parameters it started with); run one "
                            "process.")


@pytest.mark.parametrize("name", GROWING)
def test_compile_is_refused_in_one_line_before_a_model_loads(name, tiny_bert, tmp_path, monkeypatch, capsys):
    """Each growth changes the compiled graph's parameters: dynamo recompiles (or falls back to eager), so compiled
    step times would say nothing about the method."""
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    args = [f"{k}={v}" for k, v in (METHODS.get(name).test_args() or {}).items()]
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "12", "--method", name, "--compile",
                 *[a for kv in args for a in ("--method-arg", kv)], "--store", str(tmp_path / "s.sqlite")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"eft run: error: method {name!r} adds parameters during training, which compile cannot follow (each growth "
        "changes the compiled graph's parameters: it recompiles or falls back to eager, so its step times would "
        "mislead); drop --compile.")


@pytest.mark.parametrize("name", GROWING)
def test_model_flops_count_each_steps_own_parameters(name, tiny_bert, tmp_path, monkeypatch):
    """The model FLOPs of a growing run are Σ over its steps of the step's tokens × the per-token FLOPs of the
    parameters that step trained (plus the attention term), not the final shape over every token; the total
    parameter count is the model's at the end, as the trainable count is."""
    from efficientft.flops import flop_shape
    from efficientft.store import Store
    from efficientft.train import run
    from tests.test_checkpoint import _config

    steps: list[tuple] = []
    real = train_mod.optimizer_step

    def spying(p, micro, at, *a, **k):
        tokens = sum(int(b["attention_mask"].sum()) for _, b in micro)
        pairs = sum(int((b["attention_mask"].sum(1) ** 2).sum()) for _, b in micro)
        steps.append((flop_shape(p.model), tokens, pairs))
        out = real(p, micro, at, *a, **k)
        final.clear()
        final.extend([flop_shape(p.model), sum(q.numel() for q in p.model.parameters())])
        return out

    final: list = []
    monkeypatch.setattr(train_mod, "optimizer_step", spying)
    record = run(_config(tiny_bert, name), Store(tmp_path / "runs.sqlite"))
    assert len(steps) == 8 and steps[0][0].trainable < final[0].trainable  # it grew
    want = sum(s.flops(t, q) for s, t, q in steps)
    tokens, pairs = sum(t for _, t, _ in steps), sum(q for _, _, q in steps)
    assert record["cost"]["model_flops"] == pytest.approx(want, rel=1e-12)
    assert record["cost"]["model_flops"] < final[0].flops(tokens, pairs)  # the final shape over the whole run
    assert record["cost"]["total_params"] == final[1]
