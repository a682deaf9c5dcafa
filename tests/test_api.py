"""The README's Python blocks, run verbatim: the notebook API (real MiniLM, two 2-step runs) and loading an exported
adapter with plain transformers + peft (a fresh process that never imports efficientft), plus lm-eval's load path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import efficientft
from tests.conftest import ROOT, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore")


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- test: MARKER -->`` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- test: {re.escape(marker)} -->\n```python\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no python block marked {marker!r}"
    return m.group(1)


def test_public_names_have_docstrings_and_hints():
    import inspect

    for name in efficientft.__all__:
        if name == "__version__":
            continue
        obj = getattr(efficientft, name)
        assert inspect.getdoc(obj), f"efficientft.{name} has no docstring"
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, f"efficientft.{name} has no return type"
            assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name


def test_import_does_not_load_torch():
    code = "import sys, efficientft; print('torch' in sys.modules, efficientft.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.split() == ["False", efficientft.__version__]


@pytest.mark.slow
def test_readme_python_api_example_runs_verbatim(tmp_path, monkeypatch, glue_dir, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_block("python-api"), "README.md:python-api", "exec"), ns)  # noqa: S102 - our own README
    assert ns["record"]["status"] == "done" and ns["record"]["config"]["lr_ratio"] == 4.0
    assert ns["summary"]["outcomes"] == {"done": 1, "skipped (done)": 1}  # λ = 4 was the first run
    runs = ns["runs"]
    assert len(runs) == 2 and sorted(runs["lr_ratio"]) == [1.0, 4.0]
    assert runs.loc[runs.lr_ratio == 4.0, "scores.dev/accuracy"].item() == ns["record"]["scores"]["dev/accuracy"]
    assert len(ns["table"]) == 2 and (tmp_path / "nb-report" / "report.md").is_file()
    assert ns["suite"].name == "quick" and "quick 9 runs" in capsys.readouterr().out


def _trained(model_dir: Path, tmp_path: Path):
    from efficientft.train import prepare, train

    p = prepare(tiny_config(model_dir, method="lora", targets="qv", steps=3, lr=5e-2, warmup_ratio=0.0))
    train(p, progress=False)
    out = tmp_path / "results" / "adapter"
    info = p.method.export(p.model, out)
    return p, out, info


def test_exported_adapter_loads_with_plain_transformers_and_peft(tiny_bert, tmp_path):
    p, out, info = _trained(tiny_bert, tmp_path)
    assert info["format"] == "peft-adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in out.iterdir()}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_bert).resolve()) and cfg["peft_type"] == "LORA"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    p.model.eval()
    with torch.no_grad():
        want = p.model(**tok("A man is playing a guitar.", "A man plays music.", return_tensors="pt")).logits
    (tmp_path / "load.py").write_text(readme_block("plain-peft"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import runpy, sys; runpy.run_path('load.py'); "
                           "assert 'efficientft' not in sys.modules"],
                          cwd=tmp_path, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not torch.allclose(want, torch.zeros_like(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_lm_eval_load_path_applies_the_adapter_to_a_causal_lm(tiny_llama, tmp_path):
    """lm-eval's ``--model hf --model_args pretrained=BASE,peft=DIR``: AutoModelForCausalLM, then PeftModel."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, out, _ = _trained(tiny_llama, tmp_path)
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    saved = {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k}
    assert saved and any(v.abs().sum() > 0 for v in saved.values())  # trained: B is no longer zero
    loaded = {n: q for n, q in model.named_parameters() if "lora_B" in n}
    for k, v in saved.items():
        name = next(n for n in loaded if n.startswith(k.replace(".weight", "")))
        torch.testing.assert_close(loaded[name].detach(), v)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size


# ---------------------------------------------------------------------------------------------- sweep settings
SWEEP_SETTINGS = {"workers", "executor", "retry_failed", "fresh_process", "reclaim", "early_stopping", "ray_address",
                  "ray_num_cpus", "model", "train_data", "data_dir", "device"}


def test_eft_sweep_and_run_suite_take_the_same_settings_from_one_schema():
    """``eft sweep``'s flags, ``run_suite``'s and ``plan_suite``'s keyword arguments and the runner's options are
    one list (the API lacked reclaim, fresh process, early stopping, Ray and the model override)."""
    import argparse
    import inspect

    from efficientft.cli import build_parser
    from efficientft.sweep.options import SWEEP_SETTINGS as SCHEMA
    from efficientft.sweep.options import SweepOptions

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["sweep"]
    flags = {a.dest for a in sub._actions} - {"help", "suite", "dry_run", "json", "store"}  # what the command does
    run_args = set(inspect.signature(efficientft.run_suite).parameters) - {"suite", "store", "log", "on_start"}
    plan_args = set(inspect.signature(efficientft.plan_suite).parameters) - {"suite", "store"}
    assert flags == run_args == plan_args == set(SCHEMA) == SWEEP_SETTINGS
    defaults = {n: p.default for n, p in inspect.signature(efficientft.run_suite).parameters.items() if n in SCHEMA}
    opts = SweepOptions()
    assert {n: getattr(opts, n) for n in vars(opts) if n != "env"} == {n: v for n, v in defaults.items()
                                                                      if n in vars(opts)}
    assert defaults["early_stopping"] is True and defaults["reclaim"] is False and defaults["model"] is None
    with pytest.raises(TypeError, match=r"no sweep setting 'worker'\. Did you mean 'workers'\?"):
        efficientft.plan_suite("quick", worker=2)


def test_run_suite_overrides_the_suites_model(tmp_path, tiny_bert, glue_dir, monkeypatch):
    """``model=`` (``eft sweep --model``) reaches every run: the suite's own model does not exist."""
    monkeypatch.setenv("EFT_DATA_DIR", str(glue_dir))
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndefaults: {{model: {tmp_path / 'no-such-model'}, task: rte, steps: 2, batch_size: 8, "
                     f"max_train: 16, max_eval: 16, max_length: 32}}\nmethods:\n  - {{method: lora, "
                     f"method_args: {{rank: 2}}}}\n")
    db = tmp_path / "s.sqlite"
    with pytest.raises(efficientft.ConfigError, match="inputs missing, nothing was run"):
        efficientft.run_suite(suite, db, log=None)
    summary = efficientft.run_suite(suite, db, log=None, model=str(tiny_bert))
    assert summary["outcomes"] == {"done": 1}
    assert [r["config"]["model"] for r in efficientft.Store(db).runs()] == [str(tiny_bert)]
