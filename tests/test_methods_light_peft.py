"""Light-PEFT (arXiv 2406.03792): its defining properties under the defaults a user gets (masks estimate heads and
FFN neurons, LoRA modules and ranks are scored early; the lowest-scoring are pruned structurally by the reference's
quantile rule; training goes on with what is left, λ on W_v's remaining LoRA)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Context
from efficientft.methods.light_peft import InputMask, LightLoRA
from efficientft.models import resolve_targets
from efficientft.strategy import Strategy

HEADS, LAYERS, HIDDEN, FFN = 16, 4, 64, 64


def _bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def _batches(seed=0, n=8, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, length - 3:] = 0  # padding: the module importance averages over real tokens only
    labels = (ids[:, 0] % 2).long()
    while True:
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _w(module):
    """A projection's weight, under its LoRA where it kept one."""
    return (module.base if isinstance(module, LightLoRA) else module).weight


def _rule(scores, ratio):
    """What the reference prunes (nlu_utils.py): scores at or below np.quantile(scores, ratio)."""
    s = np.asarray(scores, dtype=np.float64)
    return s <= np.quantile(s, ratio)


def _estimated(args=None):
    """A tiny BERT, all-linear LoRA, Light-PEFT's estimation under ``args`` (defaults), masks captured on the side."""
    model = _bert()
    method = METHODS.get("light_peft").from_config(args or {})
    model = method.prepare(model, resolve_targets(model, "all-linear"), Context(heads=["classifier"], total_steps=6))
    loras = {n: m for n, m in model.named_modules() if isinstance(m, LightLoRA)}
    masks, ranks, ratios = [], {n: [] for n in loras}, {n: [] for n in loras}
    real = InputMask.__init__, LightLoRA.rank_importance, LightLoRA.forward
    name = {id(m): n for n, m in loras.items()}

    def spy(self, *a, **k):
        real[0](self, *a, **k)
        masks.append(self)

    def rank_spy(self):
        v = real[1](self)
        ranks[name[id(self)]].append(v)
        return v

    def forward_spy(self, x):
        out = real[2](self, x)
        if self.recording:
            ratios[name[id(self)]].append(self.last_ratio)
        return out

    InputMask.__init__, LightLoRA.rank_importance, LightLoRA.forward = spy, rank_spy, forward_spy
    try:
        method.init_from_data(model, _batches())
    finally:
        InputMask.__init__, LightLoRA.rank_importance, LightLoRA.forward = real
    return model, method, masks, ranks, ratios


def test_light_peft_defaults_prune_the_lowest_masked_heads_and_neurons_and_the_lowest_lora_modules_and_ranks():
    model, method, masks, ranks_seen, ratios_seen = _estimated()
    a = method.args
    assert (a.rank, a.alpha, a.attn_ratio, a.ffn_ratio, a.module_ratio, a.rank_ratio) == (8, 16, 1 / 3, 1 / 3, .75, .5)
    heads = [m.mask.detach() for m in masks[0::2]]
    neurons = [m.mask.detach() for m in masks[1::2]]
    assert len(heads) == len(neurons) == LAYERS
    assert all(not torch.allclose(h, h.mean()) for h in heads)  # the masks learned (L1 and the task moved them)
    layers = model.bert.encoder.layer
    width = HIDDEN // HEADS
    for i, layer in enumerate(layers):  # heads: layerwise, the lowest masks are gone from Q, K, V (rows) and W_o
        pruned = _rule(heads[i].numpy(), 1 / 3)
        assert abs(pruned.sum() - HEADS / 3) <= 1
        kept = [h for h in range(HEADS) if not pruned[h]]
        assert method.structure["heads"][f"bert.encoder.layer.{i}"] == kept
        for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            assert _w(proj).shape == (len(kept) * width, HIDDEN)
        assert _w(layer.attention.output.dense).shape[1] == len(kept) * width
    every = torch.cat(neurons).numpy()  # neurons: global over the layers
    pruned = _rule(every, 1 / 3)
    assert abs(pruned.sum() - every.size / 3) <= 1
    for i, layer in enumerate(layers):
        kept = [j for j in range(FFN) if not pruned[i * FFN + j]]
        assert method.structure["neurons"][f"bert.encoder.layer.{i}"] == kept
        assert _w(layer.intermediate.dense).shape[0] == len(kept)
        assert _w(layer.output.dense).shape[1] == len(kept)
    assert not any(isinstance(m, InputMask) for m in model.modules())
    # LoRA modules: 75% of the 24 gone (lowest ‖ΔWx‖/‖Wx‖); ranks: half of the rest's (lowest first-order score)
    names = list(method.scores["modules"])
    tokens = next(_batches())["attention_mask"].bool()
    for n in names:  # the scores: means over the second half of the 6 steps (3), module ratios over real tokens
        assert len(ranks_seen[n]) == len(ratios_seen[n]) == 3
        torch.testing.assert_close(method.scores["ranks"][n], torch.stack(ranks_seen[n]).mean(0))
        want = float(torch.stack([r[tokens].mean() for r in ratios_seen[n]]).mean())
        assert method.scores["modules"][n] == pytest.approx(want, rel=1e-5)
    imp = np.array([method.scores["modules"][n] for n in names])
    assert len(names) == 6 * LAYERS and len(set(imp.tolist())) == len(imp)
    gone = _rule(imp, 0.75)
    assert gone.sum() == 18
    survivors = [n for n, g in zip(names, gone, strict=True) if not g]
    ranks = np.concatenate([method.scores["ranks"][n].numpy() for n in survivors])
    cut = _rule(ranks, 0.5)
    assert cut.sum() == 24
    left = {n: int((~cut[i * 8:(i + 1) * 8]).sum()) for i, n in enumerate(survivors)}
    assert method.kept_ranks(model) == {n: r for n, r in left.items() if r}
    for i, n in enumerate(survivors):
        assert method.structure["ranks"][n] == [j for j in range(8) if not cut[i * 8 + j]]
    kept_modules = {n for n, m in model.named_modules() if isinstance(m, LightLoRA)}
    assert kept_modules == {n for n, r in left.items() if r} and 0 < len(kept_modules) <= 6
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lora = sum(p.numel() for n, p in trainable.items() if not n.startswith("classifier."))
    assert lora == sum(m.A.numel() + m.B.numel() for m in model.modules() if isinstance(m, LightLoRA))
    # λ reaches W_v's remaining A and B, and nothing else
    groups = method.param_groups(model, Strategy({"v": 4.0}), 1e-3, 0.0)
    for g in groups:
        for n in g["names"]:
            v = ".attention.self.value." in n
            assert g["lr_scale"] == (4.0 if v else 1.0), n


def test_light_peft_pruned_structures_no_longer_compute_and_merge_export_reproduce_the_pruned_model(tmp_path):
    """The pruned model is exactly the unpruned one with the pruned heads', neurons', modules' and ranks' weights
    zeroed (so a pruned structure computed nothing), and merge / export + reload give the same outputs."""
    model = _bert()
    method = METHODS.get("light_peft").from_config({})
    model = method.prepare(model, resolve_targets(model, "all-linear"), Context(heads=["classifier"])).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LightLoRA):
                m.B.normal_(generator=g)  # not B = 0: a LoRA that still computed after pruning would show
    ref = copy.deepcopy(model)
    rng = np.random.default_rng(0)
    lora = [n for n, m in model.named_modules() if isinstance(m, LightLoRA)]
    structure = {
        "heads": {f"bert.encoder.layer.{i}": sorted(rng.choice(HEADS, 10, replace=False).tolist())
                  for i in range(LAYERS)},
        "neurons": {f"bert.encoder.layer.{i}": sorted(rng.choice(FFN, 40, replace=False).tolist())
                    for i in range(LAYERS)},
        "ranks": {n: ([] if i % 3 == 0 else sorted(rng.choice(8, 3, replace=False).tolist()))
                  for i, n in enumerate(lora)},
    }
    method.structure = structure
    method.apply(model, structure)
    width = HIDDEN // HEADS
    with torch.no_grad():  # the same pruning by zeroing, on the copy
        for i, layer in enumerate(ref.bert.encoder.layer):
            off = [h for h in range(HEADS) if h not in structure["heads"][f"bert.encoder.layer.{i}"]]
            cols = [h * width + j for h in off for j in range(width)]
            o = layer.attention.output.dense
            o.base.weight[:, cols] = 0
            o.A[:, cols] = 0
            off = [j for j in range(FFN) if j not in structure["neurons"][f"bert.encoder.layer.{i}"]]
            layer.output.dense.base.weight[:, off] = 0
            layer.output.dense.A[:, off] = 0
        for n, m in ref.named_modules():
            if isinstance(m, LightLoRA):
                m.B[:, [j for j in range(8) if j not in structure["ranks"][n]]] = 0
    ids = next(_batches())["input_ids"]
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert sum(isinstance(m, LightLoRA) for m in model.modules()) == len(lora) - len(lora[::3])
    # export + reload on a fresh base, then merge: the same pruned model
    method.export(model, tmp_path / "export")
    again = METHODS.get("light_peft").from_config(method.args_dict())
    base = _bert()
    reloaded = again.reload(base, tmp_path / "export", resolve_targets(base, "all-linear"),
                            Context(heads=["classifier"])).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, got, rtol=1e-5, atol=1e-6)
        merged = again.merge(reloaded)
        torch.testing.assert_close(merged(input_ids=ids).logits, got, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, LightLoRA) for m in merged.modules())


def test_light_peft_importance_scores_are_the_references():
    """Rank: |mean_j (A ⊙ ∇A)_ij| + |mean_j (B ⊙ ∇B)_ji|; module: ‖ΔWx‖₂ / ‖Wx + b‖₂ per token."""
    torch.manual_seed(0)
    m = LightLoRA(torch.nn.Linear(6, 5), 3, 2.0, 0.0).train()
    with torch.no_grad():
        m.B.normal_()
    m.recording = True
    x = torch.randn(2, 4, 6)
    (m(x) ** 2).sum().backward()
    want = (m.A * m.A.grad).mean(1).abs() + (m.B * m.B.grad).mean(0).abs()
    torch.testing.assert_close(m.rank_importance(), want.detach())
    delta = 2.0 * x @ m.A.detach().T @ m.B.detach().T
    torch.testing.assert_close(m.last_ratio, delta.norm(dim=-1) / m.base(x).detach().norm(dim=-1))


def test_light_peft_refuses_head_pruning_where_query_heads_share_key_value_heads(tiny_llama):
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    method = METHODS.get("light_peft").from_config({"rank": 4})
    with pytest.raises(ConfigError) as e:
        method.prepare(base, resolve_targets(base, "qv"), Context(heads=["score"]))
    assert str(e.value) == ("method 'light_peft' cannot prune attention heads of this model: it needs separate Q, K, "
                            "V projections with one key/value head per query head (not grouped-query attention, "
                            "not GPT-2's fused c_attn); pass attn_ratio=0.")
    ok = METHODS.get("light_peft").from_config({"rank": 4, "attn_ratio": 0, "estimate_steps": 2})
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    model = ok.prepare(base, resolve_targets(base, "qv"), Context(heads=["score"]))
    ok.init_from_data(model, _batches())
    mlp = model.model.layers[0].mlp  # LLaMA's gate projection loses the same neurons as the up projection
    assert mlp.gate_proj.weight.shape[0] == mlp.up_proj.weight.shape[0] == mlp.down_proj.weight.shape[1] < 64


def test_light_peft_refuses_lambda_when_the_early_pruning_removed_every_w_v_module():
    model = _bert()
    method = METHODS.get("light_peft").from_config({})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=["classifier"]))
    lora = [n for n, m in model.named_modules() if isinstance(m, LightLoRA)]
    structure = {"heads": {}, "neurons": {}, "ranks": {n: ([] if n.endswith("value") else [0, 1]) for n in lora}}
    method.structure = structure
    method.apply(model, structure)
    assert method.param_groups(model, Strategy({}), 1e-3, 0.0)  # λ = 1: W_q's LoRA and the head train
    with pytest.raises(ConfigError) as e:
        method.param_groups(model, Strategy({"v": 4.0}), 1e-3, 0.0)
    assert str(e.value) == ("method 'light_peft': a learning-rate ratio of 4 for role 'v' cannot apply: the early "
                            "pruning removed every LoRA module of that role (module_ratio 0.75, rank_ratio 0.5); "
                            "lower module_ratio, or drop the ratio.")


def test_light_peft_records_its_estimation_as_training_cost(tiny_bert, tmp_path, monkeypatch):
    """The estimation trains on the run's data before the run's steps (up to 800 of them): compute other methods
    do not get. The record keeps its steps, tokens, seconds and model FLOPs (the adapted, not yet pruned, model's
    shape over the batches it trained on), and a run resumed from a checkpoint records the same."""
    from efficientft.flops import flop_shape
    from efficientft.store import Store
    from efficientft.train import run
    from tests.test_checkpoint import _config, _interrupted_then_resumed

    cls = METHODS.get("light_peft")
    real = cls.init_from_data
    seen: dict = {"tokens": 0, "pairs": 0}

    def counting(self, model, batches):
        seen["shape"] = flop_shape(model)

        def counted():
            for b in batches:
                seen["tokens"] += int(b["attention_mask"].sum())
                seen["pairs"] += int((b["attention_mask"].sum(1) ** 2).sum())
                yield b

        real(self, model, counted())

    monkeypatch.setattr(cls, "init_from_data", counting)
    cfg = _config(tiny_bert, "light_peft", method_args={**cls.test_args(), "estimate_steps": 3})
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    cost = straight["cost"]
    assert cost["estimate_steps"] == 3 and cost["estimate_tokens"] == seen["tokens"] > 0
    assert cost["estimate_flops"] == pytest.approx(seen["shape"].flops(seen["tokens"], seen["pairs"]), rel=1e-12)
    assert 0 < cost["estimate_s"] <= cost["setup_s"]
    monkeypatch.setattr(cls, "init_from_data", real)
    resumed, _ = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["details"]["resumed_from_step"] == 4
    for figure in ("estimate_steps", "estimate_tokens", "estimate_flops"):
        assert resumed["cost"][figure] == cost[figure], figure
