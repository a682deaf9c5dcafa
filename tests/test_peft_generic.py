"""The generic ``peft`` method: any PEFT tuner by name, its arguments checked against the tuner's config dataclass,
λ on the trainable parameters inside W_v's module, capabilities derived from the tuner."""

import pytest
import torch

import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.train import prepare, train
from tests.conftest import tiny_config

PEFT = METHODS.get("peft")


def _cfg(model, **kw):
    base = dict(method="peft", targets="qv", max_train=8, batch_size=8, steps=2, lr=5e-3, warmup_ratio=0.0, max_eval=8)
    return tiny_config(model, **{**base, **kw})


def test_vera_from_command_line_strings_with_lambda_on_w_v(tiny_llama):
    p = prepare(_cfg(tiny_llama, method_args={"tuner": "vera", "r": "4", "d_initial": "0.5"}, lr_ratio=4.0))
    config = p.model.peft_config["default"]
    assert type(config).__name__ == "VeraConfig" and config.r == 4 and config.d_initial == 0.5
    assert config.task_type == "SEQ_CLS" and sorted(config.target_modules) == sorted(t["module"] for t in
                                                                                       p.info["targets"])
    lr = {n: g["lr_scale"] for g in p.groups for n in g["names"]}
    v = [n for n in lr if ".v_proj." in n]
    assert v and all(lr[n] == 4.0 for n in v)  # VeRA's vectors d, b of W_v at λ × lr
    assert all(s == 1.0 for n, s in lr.items() if n not in v)
    # VeRA trains two vectors per adapted layer (d: r, b: out) plus the head; A and B are frozen and shared
    heads = sum(q.numel() for n, q in p.model.named_parameters() if q.requires_grad and "score" in n)
    inner = p.model.base_model.model
    per_layer = sum(4 + inner.get_submodule(t["module"]).out_features for t in p.info["targets"])
    assert p.method.trainable_parameters(p.model) == per_layer + heads
    loss = [v for _, _, n, v in train(p, progress=False)["curve"] if n == "loss"]
    assert all(torch.isfinite(torch.tensor(loss)))
    assert p.method.args_dict() == {"tuner": "vera", "r": 4, "d_initial": 0.5}
    assert PEFT.from_config(p.method.args_dict()).args == p.method.args  # the stored form reads back


def test_prompt_tuning_has_no_w_v_role(tiny_bert, monkeypatch):
    m = PEFT.from_config({"tuner": "prompt_tuning", "num_virtual_tokens": 4})
    assert m.capabilities.targets == "none" and not m.capabilities.v_role and not m.capabilities.merge
    real = train_mod.load_model
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError) as e:
        prepare(_cfg(tiny_bert, method_args={"tuner": "prompt_tuning", "num_virtual_tokens": 4}, lr_ratio=2.0))
    assert str(e.value) == ("lr_ratio 2 (W_v's rate) cannot apply to method 'peft': it trains no parameter of W_v; "
                            "drop the ratio (it must be 1 for this method).")
    monkeypatch.setattr(train_mod, "load_model", real)
    p = prepare(_cfg(tiny_bert, method_args={"tuner": "prompt_tuning", "num_virtual_tokens": 4}))
    head = sum(q.numel() for n, q in p.model.named_parameters() if q.requires_grad and "classifier" in n)
    assert p.method.trainable_parameters(p.model) == 4 * 32 + head  # 4 virtual tokens of hidden size 32, the head
    with pytest.raises(ConfigError, match="defines no merge"):
        p.method.merge(p.model)


@pytest.mark.parametrize("args,msg", [
    (["--method-arg", "tuner=verra"], "unknown PEFT tuner 'verra'. Did you mean 'vera'? Known PEFT tuners: "),
    ([], "method 'peft' needs tuner=<name> (--method-arg tuner=vera); tuners: "),
    (["--method-arg", "tuner=vera", "--method-arg", "rr=4"],
     "method 'peft': tuner 'vera' takes no argument 'rr'. Did you mean 'r'? It accepts: r, projection_prng_key, "),
    (["--method-arg", "tuner=vera", "--method-arg", "r=four"], "method 'peft': r must be int, got 'four'."),
    (["--method-arg", "tuner=vera", "--method-arg", "target_modules=query"],
     "method 'peft': target_modules is set by efficientft (from --targets, the task and the model)"),
    (["--method-arg", "tuner=prompt_tuning", "--targets", "qkv"], "method 'peft' adapts no modules"),
])
def test_bad_tuner_arguments_are_one_line_and_exit_2(args, msg, tiny_bert, tmp_path, capsys):
    code = main(["run", "--method", "peft", "--steps", "1", "--max-train", "8", "--model", str(tiny_bert),
                 "--store", str(tmp_path / "s.sqlite"), *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_capabilities_are_derived_from_peft():
    assert PEFT.from_config({"tuner": "loha"}).capabilities.merge
    assert not PEFT.from_config({"tuner": "poly"}).capabilities.merge  # PolyLayer defines no merge
    ln = PEFT.from_config({"tuner": "ln_tuning", "target_modules": ["LayerNorm"]})
    assert ln.capabilities.targets == "none" and not ln.capabilities.v_role


def test_prompt_tuning_exports_and_reloads_to_identical_logits(tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from efficientft.methods.base import Context
    from efficientft.models import head_modules

    p = prepare(_cfg(tiny_llama, method_args={"tuner": "prompt_tuning", "num_virtual_tokens": 3}))
    train(p, progress=False)
    p.model.eval()
    x = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        want = p.model(**x).logits
    assert p.method.export(p.model, tmp_path / "e")["format"] == "peft-adapter"
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    again = PEFT.from_config(p.method.args_dict()).reload(base, tmp_path / "e", [], Context(heads=head_modules(base)))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**x).logits, want)


VB = {"tuner": "vblora", "r": 2, "num_vectors": 8, "vector_length": 8}


def test_a_shared_vector_bank_takes_a_role_only_when_all_its_modules_share_it(tiny_bert):
    """VB-LoRA's vector bank is one parameter held by every adapted module: under qv it is neither q's nor v's."""
    p = prepare(_cfg(tiny_bert, method_args=VB))
    roles = {n: r for g in p.groups for n in g["names"] for r in [p.method.param_roles(p.model)[n]]}
    bank = [n for n in roles if "vector_bank" in n]
    assert len(bank) == 1 and roles[bank[0]] == "q+v"  # was the role of whichever module registered it first
    assert {g["lr_scale"] for g in p.groups if bank[0] in g["names"]} == {1.0}
    with pytest.raises(ConfigError) as e:
        prepare(_cfg(tiny_bert, method_args=VB, lr_ratio=4.0))
    assert str(e.value) == (f"a learning-rate ratio cannot apply to {bank[0]}: it is one parameter shared by "
                            "modules of roles q, v, so it has no single role; drop the ratio or target only "
                            "modules of one role.")
    p = prepare(_cfg(tiny_bert, method_args=VB, targets="v", lr_ratio=4.0))  # every holder is W_v: λ applies
    assert {g["lr_scale"] for g in p.groups for n in g["names"] if "vector_bank" in n} == {4.0}


@pytest.mark.parametrize("args,msg", [
    ({"tuner": "adalora", "total_step": 10},
     "method 'peft': tuner 'adalora' needs a hook after every step (AdaLoRA's update_and_allocate) that the generic "
     "method does not run; use --method adalora."),
    ({"tuner": "lora", "init_lora_weights": "eva"},
     "method 'peft': init_lora_weights 'eva' needs what the generic method does not do (EVA's initialisation from "
     "data); use --method eva."),
    ({"tuner": "lora", "layers_to_transform": 99},
     "method 'peft': layers_to_transform 99 names no layer of this model's targets (layers 0-1)."),
    ({"tuner": "lora", "layers_pattern": "layer"},
     "method 'peft': layers_pattern is not needed: efficientft reads each target's layer index from its name; give "
     "layers_to_transform alone."),
])
def test_what_the_generic_method_cannot_do_is_refused_naming_the_way(args, msg, tiny_bert):
    with pytest.raises(ConfigError) as e:
        prepare(_cfg(tiny_bert, method_args=args))
    assert str(e.value) == msg


@pytest.mark.parametrize("layers,want", [(0, {"0"}), ([1], {"1"}), ("0,1", {"0", "1"})])
def test_layers_to_transform_takes_effect_on_the_trainable_set(layers, want, tiny_bert):
    p = prepare(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, "layers_to_transform": layers}))
    adapted = {n.split(".layer.")[1].split(".")[0] for n, q in p.model.named_parameters()
               if q.requires_grad and "lora_" in n}
    assert adapted == want
    # the run records the targets it adapted, not every one the run named
    assert {t["module"].split(".layer.")[1].split(".")[0] for t in p.info["targets"]} == want
    per_module = 2 * (32 + 32)  # A: r × 32, B: 32 × r
    head = sum(q.numel() for n, q in p.model.named_parameters() if q.requires_grad and "classifier" in n)
    assert p.method.trainable_parameters(p.model) == 2 * len(want) * per_module + head
