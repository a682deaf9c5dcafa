"""NeuroAda's defining property, under the defaults a user gets (top_k 1) and at k = 3: the trained entries of every
targeted weight are exactly each neuron's (output row's) top-k input connections by pretrained |W|, zero at the
start, d_out · k per weight; the pretrained weights never move; merge = the unmerged model; λ scales W_v's deltas."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from efficientft.data import TrainBatches
from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods._sparse import SparseDelta
from efficientft.models.fused import out_major_weight
from efficientft.train import prepare, train
from tests.conftest import tiny_config


def setup(model_dir, args, targets="qv", **kw):
    base = dict(method="neuroada", targets=targets, method_args=args, max_train=16, batch_size=8, steps=3, lr=5e-3,
                warmup_ratio=0.0, max_eval=8, lr_ratio=4.0, weight_decay=0.1)
    return prepare(tiny_config(model_dir, **{**base, **kw}))


def deltas(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseDelta)}


def pretrained_weights(model_dir, names):
    """Each targeted module's pretrained weight, (out, in) layout, from a fresh copy of the base."""
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    return {n: out_major_weight(base.get_submodule(n)).detach().clone() for n in names}


def expected_entries(w, span, k):
    """Row by row, the k columns of largest |w| (an argsort, not the method's topk): the set of (row, col)."""
    a, z = span
    cols = torch.argsort(w[a:z].abs(), dim=1, descending=True)[:, :k]
    return {(a + i, int(c)) for i in range(z - a) for c in cols[i]}


def test_default_is_the_papers_top1():
    assert get_method("neuroada")().args.top_k == 1  # the reference's --times_num default, the paper's ≤ 0.02 %
    with pytest.raises(ConfigError, match=r"^method 'neuroada': top_k must be a positive integer \(the paper uses 1 "
                                          r"or 20\), got 0\.$"):
        get_method("neuroada").from_config({"top_k": 0})


@pytest.mark.parametrize("args,k", [({}, 1), ({"top_k": 3}, 3)])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trains_each_neurons_top_k_inputs_by_pretrained_magnitude(arch, args, k, tiny_llama, tiny_gpt2):
    """Per row, not per column or over the whole weight; by |W|, not W or at random; zero at the start. LLaMA's v_proj
    is 16 × 32 (rows ≠ columns), GPT-2's c_attn a Conv1D (in, out) whose Q and V rows are chosen apart."""
    model_dir = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    p = setup(model_dir, args)
    mods = deltas(p.model)
    w0 = pretrained_weights(model_dir, mods)
    signed_differs = False
    expected_count = 0
    for name, m in mods.items():
        for key, part in m.sparse.items():
            got = set(map(tuple, part.index.t().tolist()))
            want = expected_entries(w0[name], part.span, k)
            assert got == want and len(got) == part.values.numel() == (part.span[1] - part.span[0]) * k, (name, key)
            assert torch.count_nonzero(part.values) == 0  # the bypass starts at zero: the pretrained function
            a, z = part.span
            signed_differs |= not torch.equal(w0[name][a:z].argmax(1), w0[name][a:z].abs().argmax(1))
            expected_count += (z - a) * k
    assert signed_differs  # a selection by signed W would have failed above
    if arch == "gpt2":
        c_attn = p.model.transformer.h[0].attn.c_attn
        assert list(c_attn.sparse) == ["q", "v"]
        assert c_attn.sparse["q"].index[0].max() < 32 and c_attn.sparse["v"].index[0].min() >= 64
    head = sum(q.numel() for n, q in p.model.named_parameters() if q.requires_grad and ".sparse." not in n)
    assert expected_count == 4 * 32 * k if arch == "gpt2" else 2 * (32 + 16) * k  # W_q, W_v of 2 layers
    assert p.method.trainable_parameters(p.model) == expected_count + head


def test_trainable_count_is_rows_times_k_on_bert(tiny_bert):
    p = setup(tiny_bert, {})
    assert p.method.trainable_parameters(p.model) == 4 * 32 * 1 + 2 * 32 + 2  # 4 weights of 32 neurons; classifier
    p = setup(tiny_bert, {"top_k": 100})  # above d_in = 32: every input, as the reference's clamp does
    assert p.method.trainable_parameters(p.model) == 4 * 32 * 32 + 2 * 32 + 2


def test_zero_init_is_the_pretrained_function(tiny_llama):
    p = setup(tiny_llama, {})
    batch = next(TrainBatches(p.train, 8, p.info["pad_id"], 0).forever())
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2).eval()
    base.score.load_state_dict(p.model.score.state_dict())
    p.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(p.model(**inputs).logits, base(**inputs).logits, rtol=1e-5, atol=1e-6)


def test_lambda_scales_w_v_deltas_only(tiny_bert, tiny_gpt2):
    p = setup(tiny_bert, {})
    groups = {(g["lr"], g["weight_decay"]): sorted(g["names"]) for g in p.groups}
    pre = "bert.encoder.layer"
    assert groups == {
        (4 * 5e-3, 0.1): sorted(f"{pre}.{i}.attention.self.value.sparse.v.values" for i in range(2)),
        (5e-3, 0.1): sorted([f"{pre}.{i}.attention.self.query.sparse.q.values" for i in range(2)]
                            + ["classifier.weight"]),
        (5e-3, 0.0): ["classifier.bias"],
    }
    p = setup(tiny_gpt2, {})
    fast = {n for g in p.groups if g["lr"] == pytest.approx(4 * 5e-3) for n in g["names"]}
    assert fast == {f"transformer.h.{i}.attn.c_attn.sparse.v.values" for i in range(2)}


def test_training_moves_only_the_chosen_entries_and_merges_exactly(tiny_bert):
    """AdamW with weight decay 0.1 for 3 steps: W' differs from W at exactly the d_out · k chosen entries, W itself and
    the biases never move, and the merged model gives the unmerged logits."""
    p = setup(tiny_bert, {"top_k": 2})
    mods = deltas(p.model)
    w0 = pretrained_weights(tiny_bert, mods)
    biases = {n: m.base.bias.detach().clone() for n, m in mods.items()}
    train(p, progress=False)
    for n, m in mods.items():
        part = next(iter(m.sparse.values()))
        with torch.no_grad():
            changed = set(map(tuple, (m.weight() != w0[n]).nonzero().tolist()))
        assert changed == expected_entries(w0[n], (0, 32), 2), n
        assert torch.equal(out_major_weight(m.base), w0[n]) and torch.equal(m.base.bias, biases[n])
        assert torch.count_nonzero(part.values) == 64
    p.model.eval()
    batch = next(TrainBatches(p.train, 8, p.info["pad_id"], 0).forever())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = p.model(**inputs).logits
        merged = p.method.merge(p.model)
        assert not deltas(merged)
        torch.testing.assert_close(merged(**inputs).logits, want, rtol=1e-5, atol=1e-6)
    for n in mods:
        w = out_major_weight(merged.get_submodule(n)).detach()
        assert int((w != w0[n]).sum()) == 32 * 2


def test_the_papers_setting_all_linear_on_a_causal_lm_generates_and_merges():
    """The paper's targets (every linear layer of LLaMA: q, k, v, o, gate, up, down) under the default top_k 1:
    one delta per neuron, 256 neurons a layer here, nothing else trains (no head on a causal LM); it generates, and
    the merged model gives the same logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from efficientft.methods.base import Context
    from efficientft.models import resolve_targets

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    method = get_method("neuroada").from_config({})
    targets = resolve_targets(lm, "all-linear")
    assert {t.name.rsplit(".", 1)[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                              "up_proj", "down_proj"}
    model = method.prepare(lm, targets, Context(heads=[], peft_task_type="CAUSAL_LM"))
    trainable = {n: q for n, q in model.named_parameters() if q.requires_grad}
    assert all(n.endswith(".values") for n in trainable)
    assert method.trainable_parameters(model) == 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32) == 512
    ids = torch.randint(1, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for q in trainable.values():
            q.normal_()  # not the zero start: a merge that dropped the deltas must fail
        want = model.eval()(input_ids=ids).logits
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 9) and torch.equal(out[:, :6], ids)
    with torch.no_grad():
        merged = method.merge(model)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    assert not deltas(merged)


@pytest.mark.parametrize("top_k,percent", [(1, 0.020), (20, 0.404)])
def test_counts_as_the_paper_reports_for_llama_7b(top_k, percent):
    """The paper's (and its reference README's) trainable share on LLaMA-7B, all seven linear layers: 0.020 % at
    k = 1 and 0.404 % at k = 20, i.e. d_out · k per weight over all 6.74 B parameters (shapes only, on the meta
    device)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from efficientft.models import resolve_targets

    with torch.device("meta"):
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                          num_hidden_layers=32, num_attention_heads=32))
    method = get_method("neuroada").from_config({"top_k": top_k})
    shapes = [out_major_weight(lm.get_submodule(t.name)).shape for t in resolve_targets(lm, "all-linear")]
    assert len(shapes) == 32 * 7
    total = sum(q.numel() for q in lm.parameters())
    assert total == 6_738_415_616
    assert round(100 * sum(method.count(o, i) for o, i in shapes) / total, 3) == percent
