"""The defining property of each method added from the field's list (issue 23 §2), under its default arguments:
DePT's shorter prompt and positional low-rank embedding update with two learning rates; LoFiT's head selection and
per-head offsets. (HUT is not shipped: README, "Methods not shipped, and why".)"""

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


# ---------------------------------------------------------------------------------------------------------- LoFiT
def _cls_batches(seed=0, n=8, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, length), generator=g)
    labels = (ids[:, 0] % 2).long()
    while True:
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_lofit_defaults_select_top_k_heads_by_stage_one_norm_then_train_offsets_on_them_only():
    """Stage 1 (the run's steps, L1 on A) ranks heads by ‖A‖₂ and keeps the top 3% (64 heads → 2); stage 2 trains
    only v on those heads' outputs (z + v, nothing for the others) and the head starts again from its init."""
    from efficientft.methods.lofit import HeadOutputs

    model = _bert(hidden=64, heads=16, layers=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = METHODS.get("lofit").from_config({})
    model = method.prepare(model, [], Context(heads=["classifier"], total_steps=6))
    sites = [m for m in model.modules() if isinstance(m, HeadOutputs)]
    assert len(sites) == 4 and all(m.offset is None and m.scale is None for m in sites)
    norms, steps = [], []
    real_select = HeadOutputs.select

    def spy(self, heads, like, init=True):
        norms.append(self.scale.detach().norm(dim=-1))
        return real_select(self, heads, like, init)

    real_forward = HeadOutputs.forward

    def count(self, x, *a, **k):
        if self.scale is not None and self is sites[0]:
            steps.append(1)
        return real_forward(self, x, *a, **k)

    HeadOutputs.select, HeadOutputs.forward = spy, count
    try:
        method.init_from_data(model, _cls_batches())
    finally:
        HeadOutputs.select, HeadOutputs.forward = real_select, real_forward
    assert len(steps) == 6  # stage 1 ran for the run's steps
    importance = torch.cat(norms)
    assert importance.shape == (64,) and not torch.allclose(importance, importance.mean())
    want = set(torch.topk(importance, 2).indices.tolist())
    got = {i * 16 + h for i, m in enumerate(sites) for h in m.heads.tolist()}
    assert got == want and len(got) == 2
    assert all(m.scale is None for m in sites)  # A is dropped after selection
    for n, p in model.named_parameters():  # the classifier is back at its initial values
        if n.startswith("classifier."):
            assert torch.equal(p, base[n]), n
    trainable = _trainable(model)
    offsets = {n: p for n, p in trainable.items() if not n.startswith("classifier.")}
    assert sum(p.numel() for p in offsets.values()) == 2 * 4  # K · d_head
    # stage 2: train, then only the offsets (and the classifier) moved, and an unselected head's output is W_o's
    groups = method.param_groups(model, Strategy({}), 1e-2, 0.01)
    opt = torch.optim.AdamW(groups, lr=1e-2)
    batches = _cls_batches(seed=1)
    for _ in range(3):
        model(**next(batches)).loss.backward()
        opt.step()
        opt.zero_grad()
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    for n, p in frozen.items():
        assert torch.equal(p, base[n.replace(".base.", ".")]), n
    for m in sites:
        x = torch.randn(3, 5, 64)
        pad = torch.zeros(16, 4)
        if m.offset is not None:
            pad[m.heads] = m.offset.detach()
            assert not torch.equal(m.offset.detach().abs().sum(), torch.tensor(0.0))
        unselected = [h for h in range(16) if h not in m.heads.tolist()]
        assert pad[unselected].abs().sum() == 0
        torch.testing.assert_close(m(x), m.base(x + pad.reshape(-1)))


def test_lofit_merges_its_offsets_into_w_o_bias_and_resumes_its_selection():
    model = _bert(hidden=64, heads=16, layers=4)
    method = METHODS.get("lofit").from_config({"top_k": 5, "select_steps": 2})
    model = method.prepare(model, [], Context(heads=["classifier"], total_steps=2))
    method.init_from_data(model, _cls_batches())
    state = method.state_dict(model)
    assert sum(len(v) for v in state["heads"].values()) == 5
    again = METHODS.get("lofit").from_config(method.args_dict())
    other = again.prepare(_bert(hidden=64, heads=16, layers=4), [], Context(heads=["classifier"]))
    again.load_state_dict(other, state)
    assert again.selected(other) == method.selected(model)
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".offset"):
                p.normal_()  # not the tiny initial offsets: a merge that dropped them must fail
        want = model(input_ids=ids).logits
        merged = method.merge(model)
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert not any(".offset" in n or ".base." in n for n, _ in merged.named_parameters())


def test_lofit_selects_and_generates_on_a_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    method = METHODS.get("lofit").from_config({"top_k": 2})
    model = method.prepare(lm, [], Context(heads=[], total_steps=3, peft_task_type="CAUSAL_LM"))
    ids = torch.randint(1, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    method.init_from_data(model, iter(lambda: {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                               "labels": ids}, None))
    assert set(_trainable(model)) == {n for n, _ in model.named_parameters() if n.endswith(".offset")}
    assert sum(p.numel() for p in _trainable(model).values()) == 2 * 8
    out = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                do_sample=False)
    assert out.shape == (2, 9) and torch.equal(out[:, :6], ids)
