"""The exact λ parameter groups (names and learning rates) of LoRA and full fine-tuning, per arXiv 2410.02247."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.models import head_modules, resolve_targets
from efficientft.strategy import Strategy

LR = 1e-3


def groups_for(model_dir, method, targets, lam, weight_decay=0.0, args=None):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    m = get_method(method).from_config(args or {})
    model = m.prepare(model, resolve_targets(model, targets), Context(heads=head_modules(model)))
    groups = m.param_groups(model, Strategy({"v": lam}), LR, weight_decay)
    return {(g["lr"], g["weight_decay"]): sorted(g["names"]) for g in groups}, model


def test_lora_qv_lambda_4(tiny_bert):
    groups, _ = groups_for(tiny_bert, "lora", "qv", 4.0, args={"rank": 4})
    pre = "base_model.model.bert.encoder.layer"
    v = sorted(f"{pre}.{i}.attention.self.value.lora_{ab}.default.weight" for i in range(2) for ab in "AB")
    q = sorted(f"{pre}.{i}.attention.self.query.lora_{ab}.default.weight" for i in range(2) for ab in "AB")
    head = [f"base_model.model.classifier.modules_to_save.default.{w}" for w in ("bias", "weight")]
    assert groups == {(4 * LR, 0.0): v, (LR, 0.0): sorted(q + head)}


def test_lora_qkv_lambda_1_is_one_group(tiny_bert):
    groups, _ = groups_for(tiny_bert, "lora", "qkv", 1.0, args={"rank": 4})
    assert list(groups) == [(LR, 0.0)]
    assert len(groups[(LR, 0.0)]) == 2 * 3 * 2 + 2


def test_full_qkv_lambda_2_keeps_biases_at_base_rate(tiny_bert):
    groups, model = groups_for(tiny_bert, "full", "qkv", 2.0, weight_decay=0.01)
    pre = "bert.encoder.layer"
    assert groups[(2 * LR, 0.01)] == sorted(f"{pre}.{i}.attention.self.value.weight" for i in range(2))
    assert groups[(LR, 0.01)] == sorted(
        [f"{pre}.{i}.attention.self.{m}.weight" for i in range(2) for m in ("query", "key")] + ["classifier.weight"]
    )
    assert groups[(LR, 0.0)] == sorted(
        [f"{pre}.{i}.attention.self.{m}.bias" for i in range(2) for m in ("query", "key", "value")]
        + ["classifier.bias"]
    )
    assert len(groups) == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for names in groups.values() for n in names}


def test_full_qv_trains_only_q_v_and_head(tiny_bert):
    groups, model = groups_for(tiny_bert, "full", "qv", 4.0)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(".key." in n or "LayerNorm" in n or "dense" in n for n in trainable)
    assert groups[(4 * LR, 0.0)] == sorted(f"bert.encoder.layer.{i}.attention.self.value.weight" for i in range(2))


def test_lora_llama_qv(tiny_llama):
    groups, _ = groups_for(tiny_llama, "lora", "qv", 8.0, args={"rank": 2})
    fast = groups[(8 * LR, 0.0)]
    assert fast == sorted(f"base_model.model.model.layers.{i}.self_attn.v_proj.lora_{ab}.default.weight"
                          for i in range(2) for ab in "AB")
    assert "base_model.model.score.modules_to_save.default.weight" in groups[(LR, 0.0)]


def test_full_gpt2_qv_slices(tiny_gpt2):
    groups, model = groups_for(tiny_gpt2, "full", "qv", 4.0)
    assert groups[(4 * LR, 0.0)] == sorted(f"transformer.h.{i}.attn.c_attn.slices.v.weight" for i in range(2))
    base = groups[(LR, 0.0)]
    assert "transformer.h.0.attn.c_attn.slices.q.weight" in base and "transformer.h.0.attn.c_attn.slices.v.bias" in base
    m = get_method("full")()
    assert m.trainable_parameters(model) == 2 * 2 * (32 * 32 + 32) + 32 * 2  # q and v rows + biases, and the head


def test_gpt2_k_slice_never_changes(tiny_gpt2):
    torch.manual_seed(0)
    _, model = groups_for(tiny_gpt2, "full", "qv", 4.0)
    method = get_method("full")()
    c_attn = model.transformer.h[0].attn.c_attn
    before = c_attn.base.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x = torch.randint(5, 1000, (4, 12))
    for _ in range(3):
        model(input_ids=x, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = method.merge(model).transformer.h[0].attn.c_attn.weight.detach()
    assert torch.equal(merged[:, 32:64], before[:, 32:64])  # K columns of the Conv1D weight, bit-identical
    assert not torch.equal(merged[:, :32], before[:, :32]) and not torch.equal(merged[:, 64:], before[:, 64:])


def test_method_argument_errors():
    from efficientft.errors import ConfigError

    with pytest.raises(ConfigError, match="method 'full' takes no argument 'rank'.*accepts: none"):
        get_method("full").from_config({"rank": 8})
    with pytest.raises(ConfigError, match="takes no argument 'rnak'. Did you mean 'rank'"):
        get_method("lora").from_config({"rnak": 8})
    with pytest.raises(ConfigError, match="rank must be a positive integer, got 0"):
        get_method("lora").from_config({"rank": "0"})
    with pytest.raises(ConfigError, match="unknown method 'lorra'. Did you mean 'lora'"):
        get_method("lorra")
