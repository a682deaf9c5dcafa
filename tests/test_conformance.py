"""The conformance matrix: every registered method, on a tiny BERT, LLaMA and GPT-2, through the same checks.

Each method must (1) train 3 steps on a batch it can overfit with a finite, falling loss; (2) build exact λ groups:
the fast group holds W_v's trainable parameters and nothing else (no bias, no norm, no head); (3) count its
trainable parameters; (4) export, reload on a fresh base model, and give identical logits; (5) merge, where it
defines merging, to identical logits. On GPT-2, "qv" means the Q and V row slices of the fused ``c_attn``: a
method either adapts exactly those (its W_v parameters under a submodule named ``v``) or refuses with a
ConfigError, and is then skipped.
"""

import dataclasses
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Context
from efficientft.models import head_modules, resolve_targets
from efficientft.train import prepare, train
from tests.conftest import tiny_config

LAMBDA = 4.0
V_MODULES = ("attention.self.value", "self_attn.v_proj")


def is_v(name):
    """A parameter of W_v's: of a value module, or of the V slice of GPT-2's fused c_attn (``c_attn.lora.v.A``)."""
    return any(m in name for m in V_MODULES) or re.search(r"\.c_attn\.\w+\.v\.", name) is not None


def method_args(name):
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).Args)}
    return {"rank": 4} if "rank" in fields else {}


@pytest.fixture(params=["bert", "llama", "gpt2"])
def model_dir(request, tiny_bert, tiny_llama, tiny_gpt2):
    return {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[request.param]


@pytest.mark.parametrize("name", METHODS.names())
def test_method_conforms(name, model_dir, tmp_path):
    cfg = tiny_config(model_dir, method=name, targets="qv", lr_ratio=LAMBDA, method_args=method_args(name),
                      max_train=8, batch_size=8, steps=3, lr=5e-3, warmup_ratio=0.0, max_eval=8,
                      export_dir=str(tmp_path / "export"))
    try:
        p = prepare(cfg)
    except ConfigError as e:
        if "gpt2" not in str(model_dir) or "fused projection" not in str(e):
            raise
        pytest.skip(f"{name} does not adapt slices of a fused projection: {e}")

    # (2) exact λ groups
    fast = [g for g in p.groups if g["lr_scale"] == LAMBDA]
    assert len(fast) == 1, f"{name}: expected one λ group, got {[g['lr_scale'] for g in p.groups]}"
    for n in fast[0]["names"]:
        assert is_v(n), f"{name}: {n} is in the λ group but is not W_v's"
        assert not n.endswith("bias") and "norm" not in n.lower()
    slow_names = [n for g in p.groups if g["lr_scale"] != LAMBDA for n in g["names"]]
    assert not [n for n in slow_names if is_v(n) and not n.endswith("bias")
                and p.method.name != "full"], f"{name}: some of W_v's adapter parameters are not in the λ group"

    # (3) trainable parameters: positive, and no more than the parameters the optimizer holds
    n_train = p.method.trainable_parameters(p.model)
    assert 0 < n_train <= sum(q.numel() for g in p.groups for q in g["params"])

    # (1) three steps, finite falling loss
    out = train(p, progress=False)
    loss = [v for kind, s, n, v in out["curve"] if n == "loss"]
    assert len(loss) == 3 and all(torch.isfinite(torch.tensor(loss)))
    assert loss[-1] < loss[0], f"{name}: loss did not fall: {loss}"

    # (4) export -> reload on a fresh base -> identical logits
    p.model.eval()
    batch = {k: v for k, v in next(iter(_batches(p))).items() if k != "labels"}
    with torch.no_grad():
        want = p.model(**batch).logits
    info = p.method.export(p.model, tmp_path / "export")
    assert info["files"]
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    ctx = Context(heads=head_modules(base))
    fresh = type(p.method)(p.method.args)
    reloaded = fresh.reload(base, tmp_path / "export", resolve_targets(base, "qv"), ctx).eval()
    with torch.no_grad():
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # (5) merge where the method defines it
    try:
        merged = fresh.merge(reloaded).eval()
    except ConfigError:
        return
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def _batches(p):
    from efficientft.data import eval_batches

    for _, b in eval_batches(p.evals["dev"], 8, p.info["pad_id"]):
        yield b
