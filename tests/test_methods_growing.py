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
