"""The generic ``peft`` method's config arguments that change which modules are adapted, or how: each either takes
effect (checked here on the trainable set, the shapes, the scale, λ's roles) or is refused in one line naming what to
use instead (issue 23 §1)."""

import dataclasses

import pytest
import torch

import efficientft.methods.peft_generic as generic
import efficientft.train as train_mod
from efficientft.api import run_key
from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.train import prepare
from tests.conftest import tiny_config

PEFT = METHODS.get("peft")


def _cfg(model, **kw):
    base = dict(method="peft", targets="qv", max_train=8, batch_size=8, steps=2, lr=5e-3, warmup_ratio=0.0, max_eval=8)
    return tiny_config(model, **{**base, **kw})


def _lora(model, **args):
    return prepare(_cfg(model, method_args={"tuner": "lora", "r": 2, **args}))


def _trained(p):
    """Trainable parameters outside the head: name (without PEFT's prefix) → shape."""
    return {n.removeprefix("base_model.model.bert.encoder."): tuple(q.shape) for n, q in p.model.named_parameters()
            if q.requires_grad and "classifier" not in n}


def _head(p):
    return sum(q.numel() for n, q in p.model.named_parameters() if q.requires_grad and "classifier" in n)


def test_rank_pattern_gives_its_rank_to_the_modules_it_names(tiny_bert):
    p = _lora(tiny_bert, rank_pattern={"query": 4})
    shapes = _trained(p)
    assert {s for n, s in shapes.items() if ".query.lora_A" in n} == {(4, 32)}
    assert {s for n, s in shapes.items() if ".value.lora_A" in n} == {(2, 32)}  # the declared r elsewhere
    assert p.method.trainable_parameters(p.model) == 2 * (4 * 64 + 2 * 64) + _head(p)
    plain = _cfg(tiny_bert, method_args={"tuner": "lora", "r": 2})
    assert run_key(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, "rank_pattern": {"query": 4}})) != \
        run_key(plain)


def test_alpha_pattern_changes_the_scale_of_the_modules_it_names(tiny_bert):
    p = _lora(tiny_bert, lora_alpha=2, alpha_pattern={"value": 16}, lora_dropout=0.25)
    inner = p.model.base_model.model.bert.encoder.layer[0].attention.self
    assert inner.value.scaling["default"] == 8.0 and inner.query.scaling["default"] == 1.0  # α/r: 16/2, 2/2
    assert inner.value.lora_dropout["default"].p == 0.25


@pytest.mark.parametrize("pattern", ["rank_pattern", "alpha_pattern"])
def test_a_pattern_key_that_sets_no_target_is_refused(pattern, tiny_bert):
    with pytest.raises(ConfigError) as e:
        _lora(tiny_bert, **{pattern: {"query": 4, "quer": 3}})  # PEFT ignored the typo silently
    assert str(e.value) == (
        f"method 'peft': {pattern} key 'quer' sets none of this run's targets (a key is a regular expression "
        "matching the end of a module name after a dot, such as query or layer\\.0\\..*value; targets: "
        "bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.value ...).")


def test_the_memory_check_counts_the_ranks_of_rank_pattern(tiny_bert, monkeypatch):
    """r=2 fits in 10 MiB; rank_pattern's r=20000 on the queries does not (20000 · 64 · 16 bytes · 2 modules)."""
    monkeypatch.setattr(generic, "_free_memory", lambda device: ("CPU", 10 * 2**20))
    assert _lora(tiny_bert) is not None
    with pytest.raises(ConfigError, match=r"more than the 0\.0 GiB of CPU memory available; choose smaller"):
        _lora(tiny_bert, rank_pattern={"query": 20000})


@pytest.mark.parametrize("exclude", [["query"], r".*\.query"])
def test_exclude_modules_removes_its_modules_from_the_trainable_set(exclude, tiny_bert):
    p = _lora(tiny_bert, exclude_modules=exclude)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in _trained(p)} == {"value"}
    assert p.method.trainable_parameters(p.model) == 2 * 2 * 64 + _head(p)
    assert [t.name.rsplit(".", 1)[1] for t in p.method.targets] == ["value", "value"]  # λ's roles read these


@pytest.mark.parametrize("exclude,what", [("query", "none"), (["query", "value"], "all")])
def test_exclude_modules_that_changes_nothing_or_leaves_nothing_is_refused(exclude, what, tiny_bert):
    with pytest.raises(ConfigError) as e:
        _lora(tiny_bert, exclude_modules=exclude)  # a string must match the whole name: PEFT excluded nothing
    assert str(e.value) == (
        f"method 'peft': exclude_modules {exclude!r} excludes {what} of this run's targets "
        "(bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.value ...); a string is a "
        "regular expression the whole module name must match, a list names modules by their last dotted parts "
        "(query), and --targets chooses the targets.")


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_are_counted_and_w_v_s_bias_learns_at_lambda(bias, tiny_bert):
    p = prepare(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, "bias": bias}, lr_ratio=4.0))
    shapes = _trained(p)
    biases = [n for n in shapes if n.endswith(".bias")]
    own = [n for n in biases if ".base_layer." in n]
    assert len(own) == 4  # W_q's and W_v's own biases in both layers
    others = {n.rsplit(".", 2)[1] for n in biases if n not in own}  # all: every bias of the model, LayerNorm's too
    assert others == (set() if bias == "lora_only" else {"key", "dense", "LayerNorm"})
    assert p.method.trainable_parameters(p.model) == 4 * 2 * 64 + sum(shapes[n][0] for n in biases) + _head(p)
    scale = {n: g["lr_scale"] for g in p.groups for n in g["names"]}
    assert {s for n, s in scale.items() if n.endswith(".value.base_layer.bias")} == {4.0}  # W_v's, at λ
    assert {s for n, s in scale.items() if n.endswith(".query.base_layer.bias")} == {1.0}
    assert all(scale[n] == 1.0 for n in scale if n.endswith(".bias") and ".base_layer." not in n)  # LayerNorm ...


def test_lora_bias_trains_a_bias_on_b_with_its_module_s_role(tiny_bert):
    p = prepare(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, "lora_bias": True}, lr_ratio=4.0))
    assert sorted(n for n in _trained(p) if n.endswith(".bias")) == [
        f"layer.{i}.attention.self.{m}.lora_B.default.bias" for i in (0, 1) for m in ("query", "value")]
    assert p.method.trainable_parameters(p.model) == 4 * (2 * 64 + 32) + _head(p)
    scale = {n: g["lr_scale"] for g in p.groups for n in g["names"]}
    assert {s for n, s in scale.items() if ".value.lora_B.default.bias" in n} == {4.0}


def test_mica_trains_a_only(tiny_bert):
    """init_lora_weights=mica (data-free: B from the base weight's minor singular vectors, frozen) takes effect."""
    p = _lora(tiny_bert, init_lora_weights="mica")
    assert {n.split(".lora_")[1].split(".")[0] for n in _trained(p)} == {"A"}


REFUSED = {
    "use_dora": (True, "makes the tuner DoRA; use --method dora"),
    "use_rslora": (True, "makes the tuner rsLoRA (scale α/√r); use --method rslora"),
    "loftq_config": ({"loftq_bits": 4}, "is LoftQ's (quantised initialisation); use --method loftq"),
    "layer_replication": ([[0, 1], [0, 2]], "changes the model's depth (it stacks copies of layers), which export "
                          "and merge here do not reproduce; adapt the model as it is"),
    "target_parameters": (["bert.encoder.layer.0.output.dense.weight"],
                          "adapts parameters outside the run's targets; choose the modules with --targets"),
    "trainable_token_indices": ([1, 2], "trains token embeddings outside the run's targets; use --method-arg "
                                "tuner=trainable_tokens"),
    "megatron_config": ({"tensor_model_parallel_size": 1},
                        "is for Megatron-LM's parallel layers; efficientft loads transformers models"),
    "use_qalora": (True, "is QA-LoRA's, for a GPTQ-quantised base, which the generic method refuses"),
    "alora_invocation_tokens": ([5], "makes the tuner activated LoRA (adapting only after invocation tokens), "
                                "which no task here puts in its inputs; drop it"),
    "ensure_weight_tying": (True, "ties trained embeddings, which the generic method does not train"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_arguments_that_make_another_method_are_refused_before_loading(name, tiny_bert, monkeypatch):
    value, why = REFUSED[name]
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError) as e:
        prepare(_cfg(tiny_bert, method_args={"tuner": "lora", name: value}))
    assert str(e.value) == f"method 'peft': {name} {why}."


def test_every_refused_argument_is_a_tuner_field_and_its_default_is_accepted():
    from peft import LoraConfig

    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    assert set(generic.REFUSED_ARGS) <= set(fields)
    m = PEFT.from_config({"tuner": "lora", "use_dora": False, "use_rslora": "false"})  # as if not given
    assert m.args_dict() == {"tuner": "lora"}  # so the run key is the same as without them


@pytest.mark.parametrize("args,msg", [
    (["--method-arg", "use_dora=true"], "method 'peft': use_dora makes the tuner DoRA; use --method dora."),
    (["--method-arg", "fan_in_fan_out=true"], "method 'peft': fan_in_fan_out is set by efficientft"),
    (["--method-arg", "modules_to_save=bert"], "method 'peft': modules_to_save is set by efficientft"),
    (["--method-arg", "exclude_modules=query"], "method 'peft': exclude_modules 'query' excludes none of this run's "
     "targets (bert.encoder.layer.0.attention.self.query, bert.encoder.layer.0.attention.self.value ...); a string "
     "is a regular expression the whole module name must match"),
])
def test_refusals_are_one_line_and_exit_2(args, msg, tiny_bert, tmp_path, capsys):
    code = main(["run", "--method", "peft", "--method-arg", "tuner=lora", "--steps", "1", "--max-train", "8",
                 "--model", str(tiny_bert), "--store", str(tmp_path / "s.sqlite"), *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_exported_biases_reload_to_identical_logits(tiny_bert, tmp_path):
    """bias=lora_only: the trained biases are part of the adapter PEFT saves, so the export is the trained model."""
    from transformers import AutoModelForSequenceClassification

    from efficientft.methods.base import Context
    from efficientft.models import head_modules
    from efficientft.train import train

    p = prepare(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, "bias": "lora_only"}, lr=5e-2))
    train(p, progress=False)
    p.model.eval()
    x = {"input_ids": torch.tensor([[101, 5, 6, 7, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        want = p.model(**x).logits
    p.method.export(p.model, tmp_path / "e")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    with torch.no_grad():
        assert not torch.allclose(base(**x).logits, want)
    again = PEFT.from_config(p.method.args_dict()).reload(base, tmp_path / "e", [], Context(heads=head_modules(base)))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**x).logits, want)


def test_exclude_modules_of_a_tuner_of_named_modules_is_peft_s(tiny_bert):
    """LayerNorm tuning names its modules itself (it has no targets): PEFT applies exclude_modules to them."""
    p = prepare(_cfg(tiny_bert, method_args={"tuner": "ln_tuning", "target_modules": ["LayerNorm"],
                                             "exclude_modules": ["embeddings.LayerNorm"]}))
    norms = {n.split(".ln_tuning_layers")[0] for n in _trained(p)}
    assert len(norms) == 4 and not any("embeddings" in n for n in norms)  # two per layer, not the embeddings'


@pytest.mark.parametrize("args", [{"bias": "lora_only"}, {"lora_bias": True}])
def test_a_merge_keeps_the_trained_biases(args, tiny_bert):
    from efficientft.train import train

    p = prepare(_cfg(tiny_bert, method_args={"tuner": "lora", "r": 2, **args}, lr=5e-2))
    train(p, progress=False)
    p.model.eval()
    x = {"input_ids": torch.tensor([[101, 5, 6, 7, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        want = p.model(**x).logits
        merged = p.method.merge(p.model)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**x).logits, want)


def test_a_pattern_is_matched_by_the_tuner_s_own_rule(tiny_bert):
    """FourierFT's n_frequency_pattern takes effect on the modules its key names, and needs a dot before the key:
    a module's full name is no key of it (PEFT's LoRA would take it), so it is refused, not ignored."""
    args = {"tuner": "fourierft", "n_frequency": 6}
    p = prepare(_cfg(tiny_bert, method_args={**args, "n_frequency_pattern": {"value": 10}}))
    assert {n.split(".")[4]: s for n, s in _trained(p).items() if "layer.0." in n} == {"query": (6,), "value": (10,)}
    full = "bert.encoder.layer.0.attention.self.query"
    with pytest.raises(ConfigError, match=f"n_frequency_pattern key '{full}' sets none of this run's targets"):
        prepare(_cfg(tiny_bert, method_args={**args, "n_frequency_pattern": {full: 10}}))
    with pytest.raises(ConfigError, match=f"block_size_pattern key '{full}' sets none of this run's targets"):
        prepare(_cfg(tiny_bert, method_args={"tuner": "c3a", "block_size": 4, "block_size_pattern": {full: 8}}))


@pytest.mark.parametrize("init,b_zero", [(True, True), ("gaussian", True), (False, False), ("orthogonal", False)])
def test_data_free_initialisations_take_effect(init, b_zero, tiny_bert):
    """init_lora_weights that need no data and keep the base weights run here: B = 0 (True, gaussian) or not."""
    p = _lora(tiny_bert, init_lora_weights=init)
    b = p.model.base_model.model.bert.encoder.layer[0].attention.self.value.lora_B["default"].weight
    assert bool(torch.all(b == 0)) == b_zero


def test_the_accepted_arguments_leave_out_the_refused_ones(tiny_bert):
    with pytest.raises(ConfigError) as e:
        PEFT.from_config({"tuner": "lora", "rr": 4})
    accepted = str(e.value).split("It accepts: ")[1].rstrip(".").split(", ")
    assert "r" in accepted and "rank_pattern" in accepted and "bias" in accepted
    assert not set(accepted) & set(generic.REFUSED_ARGS)
