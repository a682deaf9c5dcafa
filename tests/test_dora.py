"""Our DoRA layer against PEFT's ``use_dora=True``: same forward, loss and gradients; PEFT-format export; merge."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification

from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.methods.dora import DoraLinear
from efficientft.models import head_modules, resolve_targets

RANK, ALPHA = 4, 8.0


def _base(model_dir):
    """The tiny model without its own dropout (BERT's), so that train-mode outputs are comparable."""
    kw = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if "bert" in str(model_dir) else {}
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, **kw)


def _ours(model_dir, targets="qv", dropout=0.0, base=None):
    base = base if base is not None else _base(model_dir)
    m = get_method("dora").from_config({"rank": RANK, "alpha": ALPHA, "dropout": dropout})
    model = m.prepare(base, resolve_targets(base, targets), Context(heads=head_modules(base), base_model=str(model_dir)))
    return m, model


def _peft(model_dir, targets, dropout=0.0, fan_in_fan_out=False):
    base = _base(model_dir)
    names = [t.name for t in resolve_targets(base, targets)] if "*" not in targets else [targets.strip("*.")]
    cfg = LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=names,
                     modules_to_save=head_modules(base), use_dora=True, fan_in_fan_out=fan_in_fan_out)
    return get_peft_model(base, cfg)


def _randomise_and_copy(peft_model, ours):
    """Give PEFT's adapter non-trivial B and m (B = 0 at init hides most of the formula), copy all into ours."""
    torch.manual_seed(1)
    ours_params = dict(ours.named_parameters())
    copied = 0
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_B" in n or "lora_magnitude_vector" in n:
                p.add_(0.3 * torch.randn_like(p))
            name = (n.removeprefix("base_model.model.").replace(".default", "")
                    .replace(".modules_to_save", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector"))
            ours_params[name].copy_(p)
            copied += 1
    assert copied == sum(1 for p in ours.parameters() if p.requires_grad)


def _batch(vocab=30522):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def _grads(model):
    return {n.removeprefix("base_model.model.").replace(".default", "").replace(".modules_to_save", "")
            .replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): p.grad
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_forward_loss_and_gradients_equal_peft_dora(tiny_bert, dropout):
    ref = _peft(tiny_bert, "qv", dropout)
    _, ours = _ours(tiny_bert, "qv", dropout)
    _randomise_and_copy(ref, ours)
    ref.train()
    ours.train()
    batch = _batch()
    torch.manual_seed(5)  # same dropout masks: both draw one mask per adapted layer, in the same order
    out_ref = ref(**batch)
    out_ref.loss.backward()
    torch.manual_seed(5)
    out = ours(**batch)
    out.loss.backward()
    torch.testing.assert_close(out.logits, out_ref.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out_ref.loss, rtol=1e-6, atol=1e-7)
    g_ref, g = _grads(ref), _grads(ours)
    assert set(g) == set(g_ref) and len(g) == 2 * 2 * 3 + 2  # A, B, m for Q and V of 2 layers; the head
    assert all(n.endswith("lora_magnitude_vector") for n in g if "magnitude" in n)
    for n in g:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_conv1d_fused_projection_equals_peft_with_fan_in_fan_out(tiny_gpt2):
    ref = _peft(tiny_gpt2, "*.c_attn", fan_in_fan_out=True)
    _, ours = _ours(tiny_gpt2, "*.c_attn")
    assert sum(isinstance(m, DoraLinear) for m in ours.modules()) == 2
    _randomise_and_copy(ref, ours)
    ref.eval()
    ours.eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, ref(**batch).logits, rtol=1e-5, atol=1e-6)


def test_norm_without_materialising_equals_the_explicit_norm():
    torch.manual_seed(0)
    layer = DoraLinear(torch.nn.Linear(24, 40), rank=5, scaling=1.7, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    w = layer.base_layer.weight
    explicit = torch.linalg.norm(w + 1.7 * layer.lora_B.weight @ layer.lora_A.weight, dim=1)
    torch.testing.assert_close(layer.weight_norm(), explicit, rtol=1e-5, atol=1e-6)
    assert not layer.weight_norm().requires_grad


def test_equals_base_model_at_init(tiny_bert):
    base = _base(tiny_bert).eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        want = base(**batch).logits
    _, ours = _ours(tiny_bert, "qkv", base=base)
    for m in ours.modules():
        if isinstance(m, DoraLinear):  # m = ||W||_c exactly, and B = 0
            torch.testing.assert_close(m.lora_magnitude_vector, m.base_layer.weight.norm(dim=1))
            assert torch.count_nonzero(m.lora_B.weight) == 0
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(**batch).logits, want, rtol=1e-6, atol=1e-6)


def test_eval_norm_cache_follows_parameter_changes():
    torch.manual_seed(0)
    layer = DoraLinear(torch.nn.Linear(8, 6), rank=2, scaling=1.0, dropout=0.0).eval()
    first = layer.weight_norm()
    assert layer.weight_norm() is first  # cached in evaluation mode
    with torch.no_grad():
        layer.lora_B.weight.fill_(0.5)  # an in-place update (as an optimizer step) bumps the version
    second = layer.weight_norm()
    assert second is not first and not torch.allclose(second, first)
    layer.train()
    assert layer.weight_norm() is not layer.weight_norm()  # never cached while training


def test_export_loads_in_stock_peft_and_reload_reads_peft_adapters(tiny_bert, tmp_path):
    ref = _peft(tiny_bert, "qv")
    method, ours = _ours(tiny_bert, "qv")
    _randomise_and_copy(ref, ours)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    ours.eval()
    with torch.no_grad():
        want = ours(**batch).logits
    # ours -> stock PEFT
    info = method.export(ours, tmp_path / "ours")
    assert info["format"] == "peft-adapter" and "adapter_model.safetensors" in info["files"]
    stock = PeftModel.from_pretrained(_base(tiny_bert), str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits, want, rtol=1e-5, atol=1e-6)
    # PEFT's own save -> our layers
    ref.save_pretrained(str(tmp_path / "peft"))
    base = _base(tiny_bert)
    fresh = get_method("dora").from_config({"rank": RANK, "alpha": ALPHA})
    reloaded = fresh.reload(base, tmp_path / "peft", resolve_targets(base, "qv"), Context(heads=head_modules(base)))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**batch).logits, want, rtol=1e-5, atol=1e-6)
        merged = fresh.merge(reloaded).eval()
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-5, atol=1e-5)
    assert type(merged.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear


def test_plain_lora_adapter_is_refused(tiny_bert, tmp_path):
    from efficientft.errors import ConfigError

    lora = get_peft_model(_base(tiny_bert), LoraConfig(task_type="SEQ_CLS", r=RANK, target_modules=["query"]))
    lora.save_pretrained(str(tmp_path))
    base = _base(tiny_bert)
    with pytest.raises(ConfigError, match="without use_dora"):
        get_method("dora").from_config({}).reload(base, tmp_path, resolve_targets(base, "qv"),
                                                  Context(heads=head_modules(base)))
