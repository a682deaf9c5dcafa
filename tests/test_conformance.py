"""The conformance matrix: every registered method, on a tiny BERT and LLaMA (and GPT-2's fused ``c_attn``), judged by
what its declared capabilities say it can do. Nothing here names a method: a method added to METHODS is checked
without editing this file (its ``test_args(arch)`` may give tiny arguments, or None where it refuses ``arch``).

For each method and model: (1) λ: with ``v_role``, every trainable parameter learns at the strategy's factor (λ for
W_v's trainable parameters and nothing else: no bias, no norm, no head) times the method's own factor (LoRA+), and
W_v has trainable parameters; without it, λ ≠ 1 is refused with the one exact line, before a model loads;
(2) the trainable count the method reports is exactly the number of scalars the optimizer holds (a method that trains
part of a tensor and counts that part: no more), every one of them is a trainable parameter, and after training
nothing outside them has moved, while at least one and at most the reported count of scalars have; (3) three steps on a
batch it can overfit, with a finite falling loss; (4) export in the declared format (into a new folder only, or with
overwrite into one it empties; safetensors only), reload on a fresh base, identical logits, or a clear refusal where
the capabilities declare no export; (5) merge to identical logits and a plain model where ``merge``, a ConfigError
otherwise; (6) a quantized base is refused, naming the reason, where not ``quantized_base``. On GPT-2, "qv" means the
Q and V row slices of the fused ``c_attn``: a method with ``fused_slices`` adapts exactly those (W_v's parameters
under a submodule named ``v``), the others refuse them with one ConfigError.
"""

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import efficientft.train as train_mod
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Context, Method
from efficientft.models import head_modules, resolve_targets
from efficientft.train import prepare, train
from tests.conftest import classifier_forward_args, tiny_config

LAMBDA = 4.0
V_MODULES = ("attention.self.value", "self_attn.v_proj")
FORMATS = {"peft": "peft", "efficientft": "efficientft", "model": "huggingface-model"}


def is_v(name):
    """A parameter of W_v's: of a value module, or of the V slice of GPT-2's fused c_attn (``c_attn.lora.v.A``)."""
    return any(m in name for m in V_MODULES) or re.search(r"\.c_attn\.\w+\.v\.", name) is not None


def method_args(name, arch="bert"):
    """The method's tiny arguments for the conformance models (other test files reuse them)."""
    return METHODS.get(name).test_args(arch)


def _method(name, arch):
    cls = METHODS.get(name)
    args = cls.test_args(arch)
    return cls, args, (cls.from_config(args) if args is not None else None)


def _cfg(model_dir, name, args, **kw):
    base = dict(method=name, targets="qv", method_args=args, max_train=8, batch_size=8, steps=3, lr=5e-3,
                warmup_ratio=0.0, max_eval=8)
    return tiny_config(model_dir, **{**base, **kw})


@pytest.fixture(params=["bert", "llama", "gpt2"])
def arch(request):
    return request.param


@pytest.fixture
def model_dir(arch, tiny_bert, tiny_llama, tiny_gpt2):
    return {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[arch]


@pytest.mark.parametrize("name", METHODS.names())
def test_method_conforms(name, arch, model_dir, tmp_path, monkeypatch):
    cls, args, method = _method(name, arch)
    if args is None:  # the method refuses this architecture by design: one clear line, no training
        with pytest.raises(ConfigError) as e:
            prepare(_cfg(model_dir, name, cls.test_args("bert") or {}))
        assert name in str(e.value) and "\n" not in str(e.value)
        return
    caps = method.capabilities
    # a method that targets nothing or sub-layer positions runs on GPT-2; one that targets linear modules needs slices
    if arch == "gpt2" and not caps.fused_slices and caps.targets == "linear":
        with pytest.raises(ConfigError, match=rf"^method '{name}' cannot adapt part of a fused projection "
                                              r"\(transformer.h.0.attn.c_attn, role 'q'\)"):
            prepare(_cfg(model_dir, name, args))
        return

    # a forward argument the method feeds a classifier and the model does not take (prefix tuning's past_key_values,
    # renamed in BERT by transformers 5.25): refused in one line, before training
    lacking = [a for a in caps.classifier_inputs if a not in classifier_forward_args(model_dir)]
    if lacking:
        with pytest.raises(ConfigError, match=rf"^method '{name}' cannot train \w+: it feeds the model {lacking[0]}, "):
            prepare(_cfg(model_dir, name, args))
        return

    # (6) a quantized base the method cannot use, and (1) λ without W_v parameters: refused before a model loads
    real = train_mod.load_model
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    if not caps.quantized_base:
        with pytest.raises(ConfigError) as e:
            prepare(_cfg(model_dir, name, args, quantize="4bit", quant_compute_dtype="fp32", device="cpu"))
        assert str(e.value).startswith(f"method {name!r} cannot train on a 4bit quantized base: "
                                       f"{caps.quantized_base_reason}. Methods that can: ")
    if not caps.v_role:
        with pytest.raises(ConfigError) as e:
            prepare(_cfg(model_dir, name, args, lr_ratio=LAMBDA))
        assert str(e.value) == (f"lr_ratio 4 (W_v's rate) cannot apply to method {name!r}: it trains no parameter "
                                "of W_v; drop the ratio (it must be 1 for this method).")
    monkeypatch.setattr(train_mod, "load_model", real)

    # (1) λ where the method has W_v parameters: exact groups
    ratio = LAMBDA if caps.v_role else 1.0
    cfg = _cfg(model_dir, name, args, lr_ratio=ratio)
    p = prepare(cfg)
    own = p.method.lr_scales(p.model)
    params = dict(p.model.named_parameters())
    trainable = {n for n, q in params.items() if q.requires_grad}
    assert set(own) <= trainable, f"{name}: lr_scales names parameters that do not train"
    seen_v = 0
    for g in p.groups:
        assert g["lr"] == pytest.approx(cfg.lr * g["lr_scale"])
        for n in g["names"]:
            v = is_v(n) and (caps.v_bias or not n.endswith("bias")) and "norm" not in n.lower()
            seen_v += v
            want = (ratio if v else 1.0) * own.get(n, 1.0)
            assert g["lr_scale"] == pytest.approx(want, rel=1e-12), (
                f"{name}: {n} learns at {g['lr_scale']} x lr, expected {want} (W_v's: {v})")
    if caps.v_role:
        assert seen_v > 0, f"{name}: declares v_role but trains no parameter of W_v, so λ was never exercised"

    # (2) the reported count is exactly what the optimizer holds, and all of it is trainable
    held = {id(q): q for g in p.groups for q in g["params"]}
    assert {n for g in p.groups for n in g["names"]} == trainable, f"{name}: a trainable parameter has no group"
    n_train, n_held = p.method.trainable_parameters(p.model), sum(q.numel() for q in held.values())
    if type(p.method).free_values is Method.free_values:
        assert n_train == n_held > 0, f"{name}: reports {n_train} trainable parameters, the optimizer holds {n_held}"
    else:  # a method that stores a redundant form counts its free values: no more than the optimizer holds
        assert 0 < n_train <= n_held, f"{name}: reports {n_train} trainable parameters, the optimizer holds {n_held}"
    before = {k: t.detach().clone() for k, t in p.model.state_dict(keep_vars=False).items()}
    trainable_ids = {id(q) for q in held.values()}
    frozen_keys = [k for k, t in p.model.state_dict(keep_vars=True).items() if id(t) not in trainable_ids]

    # (3) three steps, finite falling loss; the trainable parameters moved, nothing else did. Dropout off: on a
    # batch it can overfit the loss is then a function of the weights alone, not of three random masks (with
    # GPT-2's dropout 0.1 a correct method's third loss is above its first about as often as not)
    for m in p.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    out = train(p, progress=False)
    loss = [v for kind, s, n, v in out["curve"] if n == "loss"]
    assert len(loss) == 3 and all(torch.isfinite(torch.tensor(loss)))
    # a zeroth-order step (owns_update: SPSA along one random direction) descends in expectation only, so three
    # of them need not lower the loss; its descent is tested over fifty steps, and its estimate against autograd,
    # in tests/test_zeroth_order.py
    if not caps.owns_update:
        assert loss[-1] < loss[0], f"{name}: loss did not fall: {loss}"
    after = p.model.state_dict()
    moved = [k for k in frozen_keys if not torch.equal(after[k], before[k])]
    assert not moved, f"{name}: frozen tensors changed in training: {moved[:3]}"
    free = p.method.free_values  # a redundant stored form (BOFT's b×b blocks) moves in its free values only
    changed = sum(int((free(k, after[k]) != free(k, before[k])).sum()) for k in before if k not in frozen_keys)
    assert 0 < changed <= n_train, f"{name}: {changed} scalars changed in training, {n_train} reported trainable"

    # (4) export in the declared format -> reload on a fresh base -> identical logits (or a clear refusal)
    p.model.eval()
    batch = {k: v for k, v in next(iter(_batches(p))).items() if k != "labels"}
    with torch.no_grad():
        want = p.model(**batch).logits
    export = tmp_path / "export"
    if caps.export == "none":
        with pytest.raises(ConfigError, match=rf"^method '{name}' cannot export what it learned"):
            p.method.export(p.model, export)
        return
    info = p.method.export(p.model, export)
    assert info["files"] == sorted(f.name for f in export.iterdir())
    if arch != "gpt2":  # fused slices are saved in our own format whatever the method's usual one
        assert info["format"].startswith(FORMATS[caps.export]), f"{name}: exported {info['format']}"
    with pytest.raises(ConfigError, match="is not empty"):  # a second export is refused unless it may replace it
        p.method.export(p.model, export)
    (export / "stale.safetensors").write_bytes(b"old")
    assert p.method.export(p.model, export, overwrite=True)["files"] == info["files"]
    written = [f.name for f in export.rglob("*") if f.is_file()]
    assert any(f.endswith(".safetensors") for f in written), written  # safetensors only: nothing to unpickle
    assert not [f for f in written if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], written
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    base_names = {n for n, _ in base.named_parameters()}
    fresh = cls.from_config(p.method.args_dict())
    reloaded = fresh.reload(base, export, resolve_targets(base, "qv"), Context(heads=head_modules(base))).eval()
    with torch.no_grad():
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # (5) merge where declared: the same logits from a plain model; a ConfigError otherwise
    if not caps.merge:
        with pytest.raises(ConfigError):
            fresh.merge(reloaded)
        return
    merged = fresh.merge(reloaded).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-4, atol=1e-5)
    names = {n for n, _ in merged.named_parameters()}
    # a bias the merge adds to a projection that had none (SSF: b' = γ ⊙ 0 + β on LLaMA) is a plain parameter
    added = {n for n in names - base_names if not (n.endswith(".bias") and n[:-4] + "weight" in base_names)}
    assert base_names <= names and not added, f"{name}: merge left adapter modules: {sorted(added)[:3]}"


def test_every_method_declares_what_the_matrix_reads():
    for name, cls in METHODS.items():
        assert "capabilities" in cls.__dict__, name
        assert cls.summary and "\n" not in cls.summary, f"{name}: one-line summary"
        for arch in ("bert", "llama", "gpt2"):
            args = cls.test_args(arch)
            assert args is None or isinstance(args, dict), f"{name}: test_args({arch!r})"


def _batches(p):
    from efficientft.data import eval_batches

    for _, b in eval_batches(p.evals["dev"], 8, p.info["pad_id"]):
        yield b
