"""LoRA on GPT-2's fused c_attn (one adapter per chosen role, as LoRA's MergedLinear), and decoder classification
with a tokenizer that has no pad token (pad = EOS, pooled from the last non-pad token)."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.methods.capabilities import Capabilities
from efficientft.methods.lora import LoRA
from efficientft.models import head_modules, load_model, resolve_targets
from efficientft.models.fused import FusedLoRA
from efficientft.strategy import Strategy
from efficientft.train import prepare, train
from tests.conftest import tiny_config

LR = 1e-3
N = 32  # n_embd of the tiny GPT-2: c_attn rows are Q [0, 32), K [32, 64), V [64, 96)


def lora_gpt2(model_dir, targets="qv", rank=4, method=None):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    m = method or get_method("lora").from_config({"rank": rank})
    torch.manual_seed(0)
    return m, m.prepare(model, resolve_targets(model, targets), Context(heads=head_modules(model)))


def test_qv_adapters_counts_and_lambda_groups(tiny_gpt2):
    m, model = lora_gpt2(tiny_gpt2)
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, FusedLoRA) and list(c_attn.lora) == ["q", "v"]
    assert c_attn.lora["v"].A.shape == (4, N) and c_attn.lora["v"].B.shape == (N, 4)
    # per layer: (A 4×32 + B 32×4) for Q and for V; the head (score, no bias) 2×32
    assert m.trainable_parameters(model) == 2 * 2 * (4 * N + N * 4) + 2 * N
    groups = {(g["lr"], g["weight_decay"]): sorted(g["names"])
              for g in m.param_groups(model, Strategy({"v": 4.0}), LR, 0.01)}
    pre = "transformer.h"
    assert groups == {
        (4 * LR, 0.01): sorted(f"{pre}.{i}.attn.c_attn.lora.v.{f}" for i in range(2) for f in "AB"),
        (LR, 0.01): sorted([f"{pre}.{i}.attn.c_attn.lora.q.{f}" for i in range(2) for f in "AB"] + ["score.weight"]),
    }
    assert not any(p.requires_grad for p in c_attn.base.parameters())


def _train(model, steps=3, weight_decay=0.1):
    torch.manual_seed(1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)
    x = torch.randint(5, 1000, (4, 12))
    for _ in range(steps):
        model(input_ids=x, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    return x


def test_k_rows_never_change_and_merge_is_mergedlinear(tiny_gpt2):
    m, model = lora_gpt2(tiny_gpt2)
    before = model.transformer.h[0].attn.c_attn.base.weight.detach().clone()
    x = _train(model)
    c_attn = model.transformer.h[0].attn.c_attn
    h = torch.randn(3, 7, N)
    with torch.no_grad():
        out, base_out = c_attn(h), c_attn.base(h)
    assert torch.equal(out[..., N:2 * N], base_out[..., N:2 * N])  # K: exactly the base module's output
    assert not torch.equal(out[..., :N], base_out[..., :N]) and not torch.equal(out[..., 2 * N:], base_out[..., 2 * N:])
    # the merged weight is W + scale · [B_q A_q; 0; B_v A_v] (Conv1D stores it transposed)
    with torch.no_grad():
        want = before.clone()
        assert c_attn.scale == 1.0  # α = r by default
        want[:, :N] += (c_attn.lora["q"].B @ c_attn.lora["q"].A).t()
        want[:, 2 * N:] += (c_attn.lora["v"].B @ c_attn.lora["v"].A).t()
        logits = model(input_ids=x).logits
    merged = m.merge(model)
    w = merged.transformer.h[0].attn.c_attn.weight.detach()
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert torch.equal(w[:, N:2 * N], before[:, N:2 * N])  # K columns of the Conv1D weight, bit-identical
    torch.testing.assert_close(w, want, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, logits, rtol=1e-5, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_export_reload_and_merge_identical_logits(tiny_gpt2, tmp_path):
    m, model = lora_gpt2(tiny_gpt2, targets="qvo")  # fused Q, V slices and the whole c_proj (W_o)
    assert list(model.transformer.h[0].attn.c_proj.lora) == ["o"]
    x = _train(model)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=x).logits
    info = m.export(model, tmp_path)
    assert info["format"] == "efficientft-trainable"
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    fresh = get_method("lora").from_config({"rank": 4})
    reloaded = fresh.reload(base, tmp_path, resolve_targets(base, "qvo"), Context(heads=head_modules(base))).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=x).logits, want)
        merged = fresh.merge(reloaded).eval()
        torch.testing.assert_close(merged(input_ids=x).logits, want, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(mod, FusedLoRA) for mod in merged.modules())


def test_whole_module_fused_lora_equals_peft(tiny_gpt2):
    """On a whole Conv1D module (c_proj), our LoRA computes what PEFT's does (fan_in_fan_out) with the same factors."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2),
        LoraConfig(r=4, lora_alpha=8, target_modules=["transformer.h.0.attn.c_proj"], fan_in_fan_out=True),
    )
    layer = peft_model.base_model.model.transformer.h[0].attn.c_proj
    torch.manual_seed(3)
    a, b = torch.randn(4, N), torch.randn(N, 4)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    ours = FusedLoRA(layer.base_layer, {"o": (0, N)}, rank=4, scale=8 / 4)
    with torch.no_grad():
        ours.lora["o"].A.copy_(a)
        ours.lora["o"].B.copy_(b)
        h = torch.randn(2, 5, N)
        torch.testing.assert_close(ours(h), layer(h), rtol=1e-5, atol=1e-5)


def test_trains_through_the_loop(tiny_gpt2):
    p = prepare(tiny_config(tiny_gpt2, method="lora", targets="qv", lr_ratio=4.0, max_train=8, steps=3, lr=5e-3,
                            warmup_ratio=0.0, max_eval=8, weight_decay=0.1))
    before = {n: t.detach().clone() for n, t in p.model.state_dict().items() if ".base." in n}
    loss = [v for _, _, n, v in train(p, progress=False)["curve"] if n == "loss"]
    assert loss[-1] < loss[0]
    after = p.model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in before.items())  # the pretrained c_attn never moves


class _Variant(LoRA):
    """A LoRA variant that changes PEFT's LoRA: it has no fused implementation unless it declares one."""

    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")

    def peft_kwargs(self):
        return {"use_rslora": True}


def test_variants_refuse_sliced_targets_unless_they_opt_in(tiny_gpt2):
    assert LoRA.capabilities.fused_slices and not _Variant.capabilities.fused_slices
    with pytest.raises(ConfigError, match=r"cannot adapt part of a fused projection \(transformer.h.0.attn.c_attn, "
                                          r"role 'q'\), and has no fused implementation here; use one of .*lora"):
        lora_gpt2(tiny_gpt2, method=_Variant())
    m, model = lora_gpt2(tiny_gpt2, targets="o", method=_Variant())  # whole modules: PEFT, as before
    assert type(model).__name__ == "PeftModelForSequenceClassification"

    class OptedIn(_Variant):
        capabilities = dataclasses.replace(_Variant.capabilities, fused_slices=True)

    assert isinstance(lora_gpt2(tiny_gpt2, method=OptedIn())[1].transformer.h[0].attn.c_attn, FusedLoRA)


def test_rank_larger_than_a_slice(tiny_gpt2):
    with pytest.raises(ConfigError, match=r"rank 40 is larger than the 'q' rows of transformer.h.0.attn.c_attn "
                                          r"allows \(\(32, 32\): at most 32\)"):
        lora_gpt2(tiny_gpt2, rank=40)


# ---------------------------------------------------------------------------------------------- decoder, no pad token
@pytest.fixture(scope="module")
def llama_without_pad(tmp_path_factory, minilm_dir):
    """A tiny LLaMA whose tokenizer has no pad token (BOS-only template, like LLaMA's), EOS = [SEP]."""
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    backend = AutoTokenizer.from_pretrained(minilm_dir).backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    backend.post_processor = TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[("[CLS]", 101)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]",
                                  model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=101,
                      eos_token_id=102, pad_token_id=None)
    path = tmp_path_factory.mktemp("llama-no-pad")
    LlamaForSequenceClassification(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    assert AutoTokenizer.from_pretrained(str(path)).pad_token is None
    return path


def test_decoder_without_pad_token_pools_last_real_token(llama_without_pad):
    loaded = load_model(str(llama_without_pad), num_labels=2)
    tok, model = loaded.tokenizer, loaded.model.eval()
    assert loaded.is_decoder and tok.pad_token == "[SEP]" and model.config.pad_token_id == tok.eos_token_id == 102
    texts = ["a short one", "a much longer sentence with many more words in it", "mid length text"]
    alone = []
    with torch.no_grad():
        for t in texts:
            alone.append(model(**tok(t, return_tensors="pt")).logits[0])
        batch = tok(texts, return_tensors="pt", padding=True)
        assert tok.padding_side == "right" and (batch["input_ids"] == 102).any()  # some rows are padded
        padded = model(**batch).logits
        torch.testing.assert_close(padded, torch.stack(alone), rtol=1e-5, atol=1e-5)
        # the head reads the last real token's hidden state
        hidden = model.model(**batch).last_hidden_state
        last = batch["attention_mask"].sum(1) - 1
        torch.testing.assert_close(model.score(hidden[torch.arange(3), last]), padded, rtol=1e-5, atol=1e-5)


def test_decoder_without_pad_token_trains(llama_without_pad):
    p = prepare(tiny_config(llama_without_pad, method="lora", targets="qv", max_train=8, steps=3, lr=5e-3,
                            warmup_ratio=0.0, max_eval=16))
    assert p.info["pad_id"] == 102 and p.info["is_decoder"]
    out = train(p, progress=False)
    loss = [v for _, _, n, v in out["curve"] if n == "loss"]
    assert loss[-1] < loss[0]
    assert 0.0 <= out["scores"]["dev/accuracy"] <= 1.0


def test_rslora_and_loraplus_on_fused_slices(tiny_gpt2):
    """The LoRA variants that only rescale (rsLoRA) or re-rate (LoRA+) work on GPT-2's Q/V slices too."""
    import math

    from transformers import AutoModelForSequenceClassification

    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets
    from efficientft.models.fused import FusedLoRA
    from efficientft.strategy import Strategy

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    rs = get_method("rslora").from_config({"rank": 4, "alpha": 8})
    model = rs.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    fused = [m for m in model.modules() if isinstance(m, FusedLoRA)]
    assert len(fused) == 2 and all(m.scale == pytest.approx(8 / math.sqrt(4)) for m in fused)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    lp = get_method("loraplus").from_config({"rank": 4, "ratio": 16})
    model = lp.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    rates = {n: g["lr_scale"] for g in lp.param_groups(model, Strategy({"v": 2.0}), 1.0, 0.0) for n in g["names"]}
    assert rates["transformer.h.0.attn.c_attn.lora.v.B"] == 32.0 and rates["transformer.h.0.attn.c_attn.lora.v.A"] == 2.0
    assert rates["transformer.h.0.attn.c_attn.lora.q.B"] == 16.0 and rates["transformer.h.0.attn.c_attn.lora.q.A"] == 1.0


def test_conv1d_is_recognised_by_type_not_by_class_name():
    """GPT-2's Conv1D stores W as (in, out): a subclass of it under another name is transposed too, and a linear
    layer that merely calls itself "Conv1D" is not (issue 24: one isinstance test, models/fused.is_conv1d)."""
    from transformers.pytorch_utils import Conv1D

    from efficientft.models.fused import is_conv1d, out_major_weight

    class Projection(Conv1D):
        pass

    renamed = Projection(6, 4)  # 6 outputs, 4 inputs: weight stored (4, 6)
    impostor = type("Conv1D", (torch.nn.Linear,), {})(4, 6)  # weight (6, 4), already out-major
    assert is_conv1d(renamed) and not is_conv1d(impostor)
    assert tuple(out_major_weight(renamed).shape) == (6, 4)
    assert tuple(out_major_weight(impostor).shape) == (6, 4)
