"""Declared capabilities: registration demands them in the class body, and validation refuses what they rule out
(before any model loads, one line each)."""

import pytest

import efficientft.train as train_mod
from efficientft.errors import ConfigError
from efficientft.methods import METHODS, register
from efficientft.methods.base import Method
from efficientft.methods.capabilities import Capabilities
from efficientft.methods.lora import LoRA
from efficientft.resolve import run_key
from tests.conftest import tiny_config


def test_register_refuses_a_class_that_inherits_its_capabilities():
    class Variant(LoRA):  # declares nothing: it would pass for LoRA (fused slices, 4-bit bases)
        pass

    with pytest.raises(TypeError, match=r"method 'variant' \(.*Variant\) must declare capabilities = "
                                        r"Capabilities\(...\) in its own class body"):
        register("variant")(Variant)
    assert "variant" not in METHODS


def test_every_registered_method_declares_its_own_capabilities():
    for name, cls in METHODS.items():
        assert isinstance(cls.__dict__.get("capabilities"), Capabilities), name


class _NoV(Method):
    """A stand-in for a prompt-type method: no module targeted, no parameter of W_v."""

    name = "nov"
    capabilities = Capabilities(targets="none", v_role=False)


@pytest.fixture
def nov(monkeypatch):
    monkeypatch.setitem(METHODS._items, "nov", _NoV)
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))


def test_a_method_without_w_v_parameters_refuses_lambda(nov, tiny_bert):
    with pytest.raises(ConfigError) as e:
        train_mod.prepare(tiny_config(tiny_bert, method="nov", method_args={}, lr_ratio=4.0))
    assert str(e.value) == ("lr_ratio 4 (W_v's rate) cannot apply to method 'nov': it trains no parameter of W_v; "
                            "drop the ratio (it must be 1 for this method).")
    with pytest.raises(ConfigError, match=r"^role_lr v=2 cannot apply to method 'nov'"):
        run_key(tiny_config(tiny_bert, method="nov", method_args={}, role_lr={"v": 2}))  # at expansion already


def test_a_method_that_targets_nothing_refuses_targets(nov, tiny_bert):
    with pytest.raises(ConfigError) as e:
        train_mod.prepare(tiny_config(tiny_bert, method="nov", method_args={}, targets="qkv"))
    assert str(e.value) == ("method 'nov' adapts no modules (it changes the input sequence or a fixed set of "
                            "parameters), so --targets means nothing for it; leave the default 'qv', got 'qkv'.")


def test_targets_all_is_read_from_the_capability(tiny_bert, monkeypatch):
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ConfigError, match=r"^targets 'all' \(every weight\) is for full fine-tuning only, not 'lora'"):
        train_mod.prepare(tiny_config(tiny_bert, method="lora", targets="all"))


def test_rank_notes_come_from_the_method_not_from_error_text(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from efficientft.models import resolve_targets

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    targets = resolve_targets(model, "qv")
    ada = METHODS.get("adalora").from_config({"rank": 24})  # init_r 36 > 32
    with pytest.raises(ConfigError, match=r"^rank 36 is larger than .*at most 32\)\. AdaLoRA starts at init_r = 36"):
        ada.check_targets(model, targets)
    METHODS.get("adalora").from_config({"rank": 16}).check_targets(model, targets)  # init_r 24 fits


def test_eft_methods_prints_one_line_per_method_with_its_capabilities(capsys):
    import json

    from efficientft.cli import main

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == sorted(METHODS.names())
    lora = next(ln for ln in lines if ln.startswith("lora "))
    assert lora.split()[1:6] == ["linear+slices", "λ:yes", "4-bit:yes", "merge:yes", "export:peft"]
    assert lora.endswith(METHODS.get("lora").summary)
    assert main(["methods", "--json"]) == 0
    recs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["capabilities"]["fused_slices"] for r in recs}["dora"] is False
    assert len(recs) == len(METHODS.names())


def test_every_registered_method_has_a_readme_row(capsys):
    """The README's "All methods at a glance" table is what `eft methods --markdown` prints: every registered
    method, with its declared capabilities as they are now (a changed declaration must change the README too)."""
    from pathlib import Path

    from efficientft.cli import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert main(["methods", "--markdown"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + len(METHODS.names())
    missing = [row for row in table if row not in readme.splitlines()]
    assert not missing, f"README.md's method table differs from `eft methods --markdown` in: {missing[:3]}"


def test_v_bias_is_read_by_the_contract_and_resume_is_gone(tiny_bert):
    """``v_bias`` is what gives a targeted module's bias its role (no method re-implements it); ``resume`` was
    declared by none and read by nothing, so it is no longer a capability (issue 24)."""
    import dataclasses

    from transformers import AutoModelForSequenceClassification

    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets

    class Biases(Method):  # trains the targets' biases; declares v_bias, defines no param_roles of its own
        name = "biases"
        capabilities = Capabilities(v_bias=True)

        def prepare(self, model, targets, ctx):
            self.ctx, self.targets = ctx, targets
            for n, p in model.named_parameters():
                p.requires_grad = n in {f"{t.name}.bias" for t in targets}
            return model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    m = Biases()
    m.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    roles = m.param_roles(model)
    assert {n: r for n, r in roles.items() if r} == {
        f"bert.encoder.layer.{i}.attention.self.{w}.bias": r for i in range(2) for w, r in (("query", "q"),
                                                                                             ("value", "v"))}
    assert "resume" not in {f.name for f in dataclasses.fields(Capabilities)}
