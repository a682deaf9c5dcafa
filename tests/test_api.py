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
