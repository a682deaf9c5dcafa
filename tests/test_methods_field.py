"""The defining property of each method added from the field's list (issue 23 §2), under its default arguments:
DePT's shorter prompt and positional low-rank embedding update with two learning rates; LoFiT's head selection and
per-head offsets; HUT's Hadamard-updated weight."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from efficientft.methods import METHODS
from efficientft.methods.base import Context
from efficientft.strategy import Strategy


def _bert(hidden=32, heads=4, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=64, max_position_embeddings=300, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------------- DePT
def test_dept_defaults_split_prompt_tuning_budget_into_a_shorter_prompt_and_a_low_rank_embedding_update():
    """The paper's setting (d = 768, s = 256): m = 40 tokens + r = 45 factors hold exactly prompt tuning's 100-token
    budget (76,800); the input is [P; E(x) + (α/√r) A B[:L]] with rank(A B) ≤ r; A, B learn at embedding_lr and the
    prompt at the run's lr, in two optimizer groups."""
    d, s, length = 768, 256, 10
    method = METHODS.get("dept").from_config({})
    model = method.prepare(_bert(hidden=d, heads=12, layers=1), [], Context(heads=["classifier"], max_length=s))
    body = {n: p for n, p in _trainable(model).items() if "classifier" not in n}
    assert sum(p.numel() for p in body.values()) == 76_800 == 100 * d
    prompt = model.prompt_encoder.default.embedding.weight
    assert prompt.shape == (40, d)  # the prompt is 40 of prompt tuning's 100 tokens at the same budget
    update = model.base_model.dept_update
    assert update.A.shape == (s, 45) and update.B.shape == (45, d) and set(body) == {
        "prompt_encoder.default.embedding.weight", "base_model.dept_update.A", "base_model.dept_update.B"}
    assert torch.count_nonzero(update.B) == 0  # training starts at plain prompt tuning
    with torch.no_grad():
        update.B.normal_()
    seen = []
    inner = model.get_base_model()
    handle = inner.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    ids = torch.randint(0, 100, (2, length))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    handle.remove()
    delta = 8.0 / math.sqrt(45) * (update.A @ update.B)
    want = torch.cat([prompt.expand(2, -1, -1), inner.bert.embeddings.word_embeddings(ids) + delta[:length]], dim=1)
    torch.testing.assert_close(seen[0], want)
    assert torch.linalg.matrix_rank(update.A.double() @ update.B.double()) == 45
    groups = method.param_groups(model, Strategy({}), 0.3, 0.0)
    rates = {n: g["lr"] for g in groups for n in g["names"]}
    assert len(groups) == 2
    assert rates["base_model.dept_update.A"] == rates["base_model.dept_update.B"] == pytest.approx(5e-4, rel=1e-12)
    assert rates["prompt_encoder.default.embedding.weight"] == 0.3


def test_dept_refuses_a_rank_beyond_its_update_and_generation(tiny_bert):
    from efficientft.errors import ConfigError
    from efficientft.tasks.generative_kind import GENERATION

    method = METHODS.get("dept").from_config({"rank": 40})
    with pytest.raises(ConfigError, match=r"^rank 40 is larger than DePT's embedding update allows \(256 positions "
                                          r"x 32 features: at most 32\)\.$"):
        method.prepare(_bert(), [], Context(heads=["classifier"], max_length=256))
    with pytest.raises(ConfigError, match=r"^method 'dept' does not train generation tasks"):
        GENERATION.check_method(method)
