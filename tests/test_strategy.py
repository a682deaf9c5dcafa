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


# ---------------------------------------------------------------------------------------------- λ that does nothing
def full_all_groups(model_dir, lam):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    m = get_method("full").from_config({})
    model = m.prepare(model, [], Context(heads=head_modules(model)))  # targets "all" resolve to no target list
    return m.param_groups(model, Strategy({"v": lam}), LR, 0.0)


@pytest.mark.parametrize("fixture,suffix", [("tiny_bert", "attention.self.value.weight"),
                                            ("tiny_llama", "self_attn.v_proj.weight")])
def test_full_all_gives_w_v_the_ratio(request, fixture, suffix):
    from efficientft.strategy import check_ratios_applied

    groups = full_all_groups(request.getfixturevalue(fixture), 4.0)
    fast = [n for g in groups if g["lr"] == 4 * LR for n in g["names"]]
    assert fast and all(n.endswith(suffix) for n in fast) and len(fast) == 2  # W_v of both layers, no bias
    check_ratios_applied(groups, {"v": 4.0}, "full", "all", from_lr_ratio=True)  # applied: no error


def test_a_ratio_no_parameter_gets_is_refused(tiny_bert, tiny_gpt2):
    from efficientft.errors import ConfigError
    from efficientft.strategy import check_ratios_applied

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    m = get_method("lora").from_config({"rank": 4})
    model = m.prepare(model, resolve_targets(model, "qk"), Context(heads=head_modules(model)))
    g = m.param_groups(model, Strategy({"v": 4.0}), LR, 0.0)
    with pytest.raises(ConfigError, match=r"lr_ratio 4 \(W_v's rate\) would change nothing: no trainable parameter "
                                          r"of method 'lora' with targets 'qk' has role 'v'; add v to --targets"):
        check_ratios_applied(g, {"v": 4.0}, "lora", "qk", from_lr_ratio=True)
    with pytest.raises(ConfigError, match="role_lr o=2 would change nothing"):
        check_ratios_applied(g, {"v": 1.0, "o": 2.0}, "lora", "qk")
    # GPT-2's W_v shares one fused weight with W_q and W_k: full fine-tuning of everything cannot give it λ
    with pytest.raises(ConfigError, match="has role 'v'"):
        check_ratios_applied(full_all_groups(tiny_gpt2, 4.0), {"v": 4.0}, "full", "all", from_lr_ratio=True)


def test_run_refuses_an_unapplied_lambda_before_training(tiny_bert, glue_dir, store):
    from efficientft.errors import ConfigError
    from efficientft.train import run
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_bert, targets="*.query,*.key", lr_ratio=4)  # patterns: judged on the groups
    with pytest.raises(ConfigError, match="no trainable parameter of method 'lora' with targets '\\*.query,\\*.key' "
                                          "has role 'v'"):
        run(cfg, store)
    assert store.runs() == []  # nothing stored as if λ had been applied


def test_role_targets_without_the_ratio_role_are_refused_before_any_model_loads(capsys, tmp_path):
    from efficientft.cli import main
    from efficientft.config import RunConfig
    from efficientft.errors import ConfigError
    from efficientft.resolve import resolve

    with pytest.raises(ConfigError, match="role_lr o=2 would change nothing: .* targets 'qv' has role 'o'"):
        resolve(RunConfig(targets="qv", role_lr={"o": 2}))  # resolution: before any model loads
    assert RunConfig(targets="qkvo", role_lr={"o": 2}).role_ratios == {"o": 2.0, "v": 1.0}
    rc = main(["run", "--task", "rte", "--targets", "qk", "--lr-ratio", "4", "--store", str(tmp_path / "s")])
    assert rc == 2 and capsys.readouterr().err == (
        "eft run: error: lr_ratio 4 (W_v's rate) would change nothing: no trainable parameter of method 'lora' "
        "with targets 'qk' has role 'v'; add v to --targets or drop the ratio.\n")


@pytest.mark.parametrize("max_length,pair,msg", [(1, False, "at least 3"), (4, True, "at least 5")])
def test_max_length_below_the_special_tokens_is_refused(tiny_bert, max_length, pair, msg):
    from transformers import AutoTokenizer

    from efficientft.config import check_max_length
    from efficientft.errors import ConfigError

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    with pytest.raises(ConfigError, match=rf"max_length {max_length} is too small: the tokenizer adds "
                                          rf"{2 if not pair else 3} special tokens .* {msg}"):
        check_max_length(max_length, tok, pair)
    least = int(msg.split()[-1])
    check_max_length(least, tok, pair)
    ids = tok(["a b c d e f"], ["g h i j"] if pair else None, truncation=True, max_length=least)["input_ids"]
    assert len(ids[0]) == least  # the minimum truncates for real


def test_run_refuses_a_too_small_max_length(tiny_bert, glue_dir, capsys, tmp_path):
    from efficientft.cli import main

    rc = main(["run", "--task", "rte", "--model", str(tiny_bert), "--steps", "1", "--max-train", "8",
               "--max-eval", "8", "--max-length", "2", "--store", str(tmp_path / "s.sqlite"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_length 2 is too small" in err and "--max-length 5 or more" in err, err


def test_norms_and_biases_are_recognised_by_type_not_by_name():
    """No weight decay and no role for normalisation weights and biases, known by the module's type (torch's norm
    classes, or a leaf with a 1-D gain and an epsilon: transformers' per-model RMSNorm classes), never by a class
    or parameter name that merely contains "norm" or ends in "bias" (issue 24)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from efficientft.strategy import is_norm, no_decay

    class Gain(torch.nn.Module):  # an RMSNorm under a name without "norm"
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))
            self.variance_epsilon = 1e-6

    class LayerNormalisedProjection(torch.nn.Linear):  # a projection whose name contains "layernorm"
        pass

    assert is_norm(torch.nn.LayerNorm(4)) and is_norm(LlamaRMSNorm(4)) and is_norm(Gain())
    assert not is_norm(LayerNormalisedProjection(4, 4)) and not is_norm(torch.nn.Embedding(3, 4))
    linear = torch.nn.Linear(4, 4)
    assert no_decay("layer.bias", linear) and not no_decay("layer.weight", linear)
    assert not no_decay("layer.attn_bias", None)  # a parameter called attn_bias is not a module's bias
    assert no_decay("ln.weight", Gain())
