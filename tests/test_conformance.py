"""The conformance matrix: every registered method, on a tiny BERT, LLaMA and GPT-2, through the same checks.

Each method must (1) train 3 steps on a batch it can overfit with a finite, falling loss; (2) build exact λ groups:
every trainable parameter learns at the strategy's factor (λ for W_v's trainable parameters and nothing else: no
bias, no norm, no head) times the method's own per-parameter factor (LoRA+ gives B a ratio), and W_v has trainable
parameters; (3) count its trainable parameters; (4) export (into a new folder only, or with overwrite into one it
empties), reload on a fresh base model, and give identical logits; (5) merge, where it defines merging, to identical
logits. On GPT-2, "qv" means the Q and V row slices of the fused
``c_attn``: a method either adapts exactly those (its W_v parameters under a submodule named ``v``) or refuses with a
ConfigError, and is then skipped.
"""

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
    return METHODS.get(name).test_args()


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
        if "gpt2" not in str(model_dir) or METHODS.get(name).capabilities.fused_slices:
            raise
        pytest.skip(f"{name} does not adapt slices of a fused projection: {e}")

    # (2) exact λ groups: every parameter's factor is the strategy's (λ for W_v's, 1 otherwise) times the method's
    # own (LoRA+ gives B a ratio); biases, norms and the head never get λ
    own = p.method.lr_scales(p.model)
    trainable = {n for n, q in p.model.named_parameters() if q.requires_grad}
    assert set(own) <= trainable, f"{name}: lr_scales names parameters that do not train"
    seen_v = 0
    for g in p.groups:
        assert g["lr"] == pytest.approx(cfg.lr * g["lr_scale"])
        for n in g["names"]:
            v = is_v(n) and not n.endswith("bias") and "norm" not in n.lower()
            seen_v += v
            want = (LAMBDA if v else 1.0) * own.get(n, 1.0)
            assert g["lr_scale"] == pytest.approx(want, rel=1e-12), (
                f"{name}: {n} learns at {g['lr_scale']} x lr, expected {want} (W_v's: {v})")
    assert seen_v > 0, f"{name}: no trainable parameter of W_v, so λ was never exercised"
    assert sum(len(g["names"]) for g in p.groups) == len(trainable), f"{name}: a trainable parameter has no group"

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
    assert info["files"] == sorted(f.name for f in (tmp_path / "export").iterdir())
    # the folder now holds an export: a second one is refused unless it may replace it, and then replaces it
    with pytest.raises(ConfigError, match="is not empty"):
        p.method.export(p.model, tmp_path / "export")
    (tmp_path / "export" / "stale.safetensors").write_bytes(b"old")
    assert p.method.export(p.model, tmp_path / "export", overwrite=True)["files"] == info["files"]
    # weights are exported as safetensors only: nothing a reader would have to unpickle
    written = [f.name for f in (tmp_path / "export").rglob("*") if f.is_file()]
    assert any(f.endswith(".safetensors") for f in written), written
    assert not [f for f in written if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], written
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
