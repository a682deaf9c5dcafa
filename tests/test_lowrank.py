"""The fast low-rank product equals plain autograd, and PEFT layers running it equal stock PEFT."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

from efficientft.lowrank import fast_lora_class, lowrank_add, use_fast_lora


def _leaves(seed=0, t=(2, 7), d_in=12, d_out=10, r=3):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_(True)  # noqa: E731
    return mk(*t, d_out), mk(*t, d_in), mk(r, d_in), mk(d_out, r)


def _reference(base, x, a, b, s):
    return base + s * F.linear(F.linear(x, a), b)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_values_and_gradients_equal_plain_autograd(precision):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    tol = {"rtol": 2e-2, "atol": 2e-2} if precision == "bf16" else {"rtol": 1e-5, "atol": 1e-6}
    results = []
    for fn in (lowrank_add, _reference):
        leaves = _leaves()
        base, *rest = leaves
        with ctx:  # under autocast the frozen layer's output (base) is bf16, as F.linear's would be
            out = fn(base.to(torch.bfloat16) if precision == "bf16" else base, *rest, 1.7)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out, [p.grad for p in leaves]))
    (out, grads), (want, want_grads) = results
    assert out.dtype == want.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    torch.testing.assert_close(out.float(), want.float(), **tol)
    for g, w in zip(grads, want_grads, strict=True):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, **tol)


def _peft_model(model_dir, fast, dropout, use_dora=False):
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=dropout, use_dora=use_dora,
                     target_modules=["query", "value"], modules_to_save=["classifier"])
    if fast:
        use_fast_lora(cfg)
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    return model


@pytest.mark.parametrize("dropout,use_dora", [(0.0, False), (0.1, False), (0.0, True)])
def test_peft_layers_with_our_forward_equal_stock_peft(tiny_bert, dropout, use_dora):
    ids = torch.randint(1000, 30000, (3, 9), generator=torch.Generator().manual_seed(1))
    out = {}
    for fast in (True, False):
        model = _peft_model(tiny_bert, fast, dropout, use_dora)
        layers = [m for m in model.modules() if type(m).__name__ in ("FastLoraLinear", "Linear") and hasattr(m, "lora_A")]
        assert len(layers) == 4 and all(isinstance(m, fast_lora_class()) == fast for m in layers)
        model.train()
        torch.manual_seed(3)  # the same dropout masks
        res = model(input_ids=ids, labels=torch.tensor([0, 1, 1]))
        res.loss.backward()
        out[fast] = (res.logits, {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    assert out[True][1].keys() == out[False][1].keys()
    for n in out[True][1]:
        torch.testing.assert_close(out[True][1][n], out[False][1][n], rtol=1e-4, atol=1e-6)
