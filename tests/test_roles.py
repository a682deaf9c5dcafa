"""The role map: role presets, patterns and fused projections on BERT, LLaMA and GPT-2 models."""

import pytest
from transformers import AutoModelForSequenceClassification

from efficientft.errors import ConfigError
from efficientft.models import head_modules, parse_roles, resolve_targets


@pytest.fixture(scope="module")
def bert(tiny_bert):
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoModelForSequenceClassification.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return AutoModelForSequenceClassification.from_pretrained(tiny_gpt2)


def names(targets):
    return [(t.name, t.role) for t in targets]


def test_parse_roles():
    assert parse_roles("qv") == ("q", "v")
    assert parse_roles("vq") == ("q", "v")
    assert parse_roles("qkvo") == ("q", "k", "v", "o")
    assert parse_roles("q,v,ffn_up") == ("q", "v", "ffn_up")
    assert parse_roles("*.query") is None


def test_bert_roles(bert):
    assert names(resolve_targets(bert, "qv")) == [
        (f"bert.encoder.layer.{i}.attention.self.{m}", r) for i in range(2) for m, r in (("query", "q"), ("value", "v"))
    ]
    assert len(resolve_targets(bert, "qkv")) == 6
    qkvo = resolve_targets(bert, "qkvo")
    assert {t.role for t in qkvo} == {"q", "k", "v", "o"}
    assert "bert.encoder.layer.0.attention.output.dense" in [t.name for t in qkvo]
    every = resolve_targets(bert, "all-linear")
    assert len(every) == 2 * 6 and "bert.pooler.dense" not in [t.name for t in every]
    assert {t.role for t in every} == {"q", "k", "v", "o", "ffn_up", "ffn_down"}
    assert head_modules(bert) == ["classifier"]


def test_llama_roles(llama):
    t = resolve_targets(llama, "qv")
    assert names(t) == [(f"model.layers.{i}.self_attn.{m}", r) for i in range(2)
                        for m, r in (("q_proj", "q"), ("v_proj", "v"))]
    assert {x.role for x in resolve_targets(llama, "ffn")} == {"ffn_up", "ffn_gate", "ffn_down"}
    assert head_modules(llama) == ["score"]


def test_gpt2_fused_slices(gpt2):
    t = resolve_targets(gpt2, "qv")
    assert [(x.name, x.role, x.out_slice) for x in t] == [
        (f"transformer.h.{i}.attn.c_attn", r, s) for i in range(2) for r, s in (("q", (0, 32)), ("v", (64, 96)))
    ]
    o = resolve_targets(gpt2, "o")
    assert names(o) == [(f"transformer.h.{i}.attn.c_proj", "o") for i in range(2)]


def test_patterns_keep_known_roles(bert):
    t = resolve_targets(bert, "*.value")
    assert names(t) == [(f"bert.encoder.layer.{i}.attention.self.value", "v") for i in range(2)]
    assert names(resolve_targets(bert, "re:.*layer\\.1\\.attention\\.self\\.query")) == [
        ("bert.encoder.layer.1.attention.self.query", "q")]
    assert names(resolve_targets(bert, "pooler.dense")) == [("bert.pooler.dense", None)]


def test_pattern_that_matches_nothing_lists_modules(bert):
    with pytest.raises(ConfigError) as e:
        resolve_targets(bert, "q_proj")
    msg = str(e.value)
    assert "matches no linear module" in msg and "bert.encoder.layer.*.attention.self.query" in msg


def test_role_missing_from_family(bert):
    with pytest.raises(ConfigError, match=r"no module of this bert-family model plays role\(s\) \['ffn_gate'\]"):
        resolve_targets(bert, "ffn_gate")


def test_unknown_architecture_needs_patterns(bert, monkeypatch):
    monkeypatch.setattr(bert.config, "model_type", "mystery")
    with pytest.raises(ConfigError, match="model type 'mystery' has no role map.*linear modules are"):
        resolve_targets(bert, "qv")
    assert len(resolve_targets(bert, "*.query,*.value")) == 4
