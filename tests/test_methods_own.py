"""The methods PEFT lacks: SIFT (sparse increments, exact sparsity under AdamW) and GaLore (rank-r optimizer state)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from efficientft.data import TrainBatches
from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods._sparse import SparseDelta
from efficientft.methods.base import TRAINABLE_FILE, Context
from efficientft.methods.sift import sparse_count
from efficientft.models import head_modules, resolve_targets
from efficientft.models.fused import out_major_weight
from efficientft.train import prepare, run, train
from tests.conftest import tiny_config

LR = 1e-3


def setup(model_dir, method, args, targets="qv", **kw):
    base = dict(method=method, targets=targets, method_args=args, max_train=16, batch_size=8, steps=3, lr=5e-3,
                warmup_ratio=0.0, max_eval=8, lr_ratio=4.0, weight_decay=0.1)
    return prepare(tiny_config(model_dir, **{**base, **kw}))


def sparse_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseDelta)}


def first_batch(p):
    batch = next(TrainBatches(p.train, p.cfg.batch_size, p.info["pad_id"], p.cfg.seed).forever())
    return {k: v.to(p.device) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------------------------- SIFT
def test_sparse_count():
    assert sparse_count(0.01, 1024) == 11  # ⌈10.24⌉
    assert sparse_count(0.25, 1024) == 256
    assert sparse_count(1e-6, 100) == 1 and sparse_count(1.0, 100) == 100


def test_sift_args_errors():
    with pytest.raises(ConfigError, match=r"sparse_rate must be in \(0, 1\] \(the paper uses about 0.01\), got 0.0"):
        get_method("sift").from_config({"sparse_rate": "0"})
    with pytest.raises(ConfigError, match="sparse_rate must be in"):
        get_method("sift").from_config({"sparse_rate": 1.5})
    with pytest.raises(ConfigError, match="select_batches must be a positive integer"):
        get_method("sift").from_config({"select_batches": 0})
    assert get_method("sift")().args.sparse_rate == 0.01  # the paper's ~1%, not the reference's 20%


def test_sift_counts_and_lambda_groups(tiny_bert):
    p = setup(tiny_bert, "sift", {"sparse_rate": 0.05})
    k = 52  # ⌈0.05 · 32 · 32⌉ per weight
    assert all(part.values.numel() == k for m in sparse_modules(p.model).values() for part in m.sparse.values())
    assert p.method.trainable_parameters(p.model) == 4 * k + 2 * 32 + 2  # W_q, W_v of 2 layers; the classifier
    groups = {(g["lr"], g["weight_decay"]): sorted(g["names"]) for g in p.groups}
    pre = "bert.encoder.layer"
    assert groups == {
        (4 * 5e-3, 0.1): sorted(f"{pre}.{i}.attention.self.value.sparse.v.values" for i in range(2)),
        (5e-3, 0.1): sorted([f"{pre}.{i}.attention.self.query.sparse.q.values" for i in range(2)]
                            + ["classifier.weight"]),
        (5e-3, 0.0): ["classifier.bias"],
    }


def test_sift_chooses_the_top_gradient_entries(tiny_llama):
    p = setup(tiny_llama, "sift", {"sparse_rate": 0.03})
    modules = sparse_modules(p.model)
    weights = [m.base.weight for m in modules.values()]
    for m in modules.values():  # the pretrained function, as during selection
        m.chosen = False
    for w in weights:
        w.requires_grad_(True)
    p.model.eval()
    grads = torch.autograd.grad(p.model(**first_batch(p)).loss, weights)
    for (name, m), g in zip(modules.items(), grads, strict=True):
        part = next(iter(m.sparse.values()))
        top = torch.topk(g.abs().flatten(), part.values.numel()).indices
        chosen = part.index[0] * g.shape[1] + part.index[1]
        assert set(chosen.tolist()) == set(top.tolist()), name
        assert len(set(chosen.tolist())) == part.values.numel() == sparse_count(0.03, g.numel())


def test_sift_changes_exactly_the_chosen_entries_under_adamw(tiny_bert):
    """The defining property, with weight decay 0.1 and momentum: after each step exactly k entries moved."""
    p = setup(tiny_bert, "sift", {"sparse_rate": 0.05})
    modules = sparse_modules(p.model)
    pretrained = {n: out_major_weight(m.base).detach().clone() for n, m in modules.items()}
    batches = TrainBatches(p.train, 8, p.info["pad_id"], 0).forever()
    p.model.train()
    for _ in range(3):
        p.model(**next(batches)).loss.backward()
        p.optimizer.step()
        p.optimizer.zero_grad()
        for n, m in modules.items():
            with torch.no_grad():
                changed = (m.weight() != pretrained[n]).nonzero().t()
            index = next(iter(m.sparse.values())).index
            assert changed.shape[1] == 52, n
            assert set(map(tuple, changed.t().tolist())) == set(map(tuple, index.t().tolist()))
            assert torch.equal(out_major_weight(m.base), pretrained[n])  # the frozen weight itself never moves
    merged = p.method.merge(p.model)
    for n, w0 in pretrained.items():
        w = out_major_weight(merged.get_submodule(n)).detach()
        assert int((w != w0).sum()) == 52


def test_sift_gpt2_slices_keep_k_rows(tiny_gpt2, tmp_path):
    p = setup(tiny_gpt2, "sift", {"sparse_rate": 0.05})
    c_attn = p.model.transformer.h[0].attn.c_attn
    assert list(c_attn.sparse) == ["q", "v"]
    assert c_attn.sparse["q"].index[0].max() < 32 and c_attn.sparse["v"].index[0].min() >= 64
    before = c_attn.base.weight.detach().clone()  # Conv1D: (in, out)
    train(p, progress=False)
    merged = p.method.merge(p.model).transformer.h[0].attn.c_attn.weight.detach()
    assert torch.equal(merged[:, 32:64], before[:, 32:64])
    assert int((merged[:, :32] != before[:, :32]).sum()) == int((merged[:, 64:] != before[:, 64:]).sum()) == 52


def test_sift_export_reload_merge(tiny_llama, tmp_path):
    p = setup(tiny_llama, "sift", {"sparse_rate": 0.05})
    train(p, progress=False)
    p.model.eval()
    batch = {k: v for k, v in first_batch(p).items() if k != "labels"}
    with torch.no_grad():
        want = p.model(**batch).logits
    p.method.export(p.model, tmp_path)
    saved = load_file(str(tmp_path / TRAINABLE_FILE))
    v0 = "model.layers.0.self_attn.v_proj.sparse.v"
    k = sparse_count(0.05, 16 * 32)  # v_proj is 16 × 32 (2 key-value heads)
    assert saved[f"{v0}.index"].shape == (2, k) and saved[f"{v0}.values"].shape == (k,)
    assert not [n for n in saved if "base" in n]  # no dense weight is stored

    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    targets, ctx = resolve_targets(base, "qv"), Context(heads=head_modules(base))
    fresh = get_method("sift").from_config({"sparse_rate": 0.05})
    reloaded = fresh.reload(base, tmp_path, targets, ctx).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, want)
        merged = fresh.merge(reloaded)
        assert not sparse_modules(merged)
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-5, atol=1e-6)

    other = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2)
    with pytest.raises(ConfigError, match="was it trained with another sparse_rate"):
        get_method("sift").from_config({"sparse_rate": 0.1}).reload(other, tmp_path, targets, ctx)


# ------------------------------------------------------------------------------------------------------------- GaLore
def test_galore_args_errors(tiny_bert):
    with pytest.raises(ConfigError, match="proj_type must be one of std, reverse_std, left, right, full, got 'diag'"):
        get_method("galore").from_config({"proj_type": "diag"})
    with pytest.raises(ConfigError, match="update_proj_gap must be a positive integer"):
        get_method("galore").from_config({"update_proj_gap": 0})
    with pytest.raises(ConfigError, match=r"rank 64 is larger than bert.encoder.layer.0.attention.self.query allows"):
        setup(tiny_bert, "galore", {"rank": 64})


def test_galore_lambda_groups(tiny_bert):
    p = setup(tiny_bert, "galore", {"rank": 4}, weight_decay=0.01)
    groups = {(g["lr"], g["weight_decay"], g.get("rank")): sorted(g["names"]) for g in p.groups}
    pre = "bert.encoder.layer"
    assert groups == {
        (4 * 5e-3, 0.01, 4): sorted(f"{pre}.{i}.attention.self.value.weight" for i in range(2)),
        (5e-3, 0.01, 4): sorted(f"{pre}.{i}.attention.self.query.weight" for i in range(2)),
        (5e-3, 0.01, None): ["classifier.weight"],
        (5e-3, 0.0, None): sorted([f"{pre}.{i}.attention.self.{m}.bias" for i in range(2) for m in ("query", "value")]
                                  + ["classifier.bias"]),
    }
    # the weights themselves train: the parameter count is full fine-tuning's
    assert p.method.trainable_parameters(p.model) == 4 * (32 * 32 + 32) + 2 * 32 + 2


def test_galore_state_is_low_rank_and_projector_refreshes_every_gap(tiny_llama):
    p = setup(tiny_llama, "galore", {"rank": 4, "update_proj_gap": 2}, weight_decay=0.0)
    q = p.model.model.layers[0].self_attn.q_proj.weight  # 32 × 32: projected on the right, state 32 × r
    v = p.model.model.layers[0].self_attn.v_proj.weight  # 16 × 32: projected on the left, state r × 32
    head = p.model.score.weight
    batches = TrainBatches(p.train, 8, p.info["pad_id"], 0).forever()
    seen, refreshed = [], []
    for step in range(1, 6):
        p.model(**next(batches)).loss.backward()
        grad_q = q.grad.detach().clone()
        p.optimizer.step()
        p.optimizer.zero_grad()
        ortho = p.optimizer.state[q]["projector"].ortho_matrix
        refreshed.append(step == 1 or ortho is not seen[-1])
        seen.append(ortho)
        if step == 3:  # a refresh: the top-r right singular vectors of this step's gradient
            torch.testing.assert_close(ortho, torch.linalg.svd(grad_q, full_matrices=False)[2][:4])
    assert refreshed == [True, False, True, False, True]
    assert not torch.equal(seen[0], seen[2])
    state = p.optimizer.state
    assert state[q]["exp_avg"].shape == state[q]["exp_avg_sq"].shape == (32, 4)
    assert state[v]["exp_avg"].shape == state[v]["exp_avg_sq"].shape == (4, 32)
    assert state[v]["projector"].ortho_matrix.shape == (16, 4)
    assert state[head]["exp_avg"].shape == (2, 32) and "projector" not in state[head]


def test_galore_records_optimizer_state_size(tiny_llama):
    cfg = tiny_config(tiny_llama, method="galore", targets="qv", method_args={"rank": 4}, max_train=8, steps=2,
                      max_eval=8)
    cost = run(cfg)["cost"]
    # per layer: q moments 2·32·4 + projector 4·32, v moments 2·4·32 + projector 16·4; head moments 2·(2·32)
    assert cost["optimizer_state_numel"] == 2 * (256 + 128 + 256 + 64) + 128
    assert cost["optimizer_state_bytes"] == 4 * cost["optimizer_state_numel"]
    full = run(tiny_config(tiny_llama, method="full", targets="qv", max_train=8, steps=2, max_eval=8))["cost"]
    assert full["optimizer_state_numel"] == 2 * (2 * (32 * 32 + 16 * 32) + 2 * 32)  # AdamW: two moments each


def test_our_wrapping_methods_share_one_injection_skeleton(tiny_bert):
    """DoRA, KaSA, PaCA, SoRA, SIFT, SSF, LoLDU and SVFit inject through one base (methods/_inject.WrapsTargets):
    a new wrapper method is its wrap() alone, and gets the checks, the freezing, the roles and the merge from it
    (issue 24)."""
    from efficientft.methods import METHODS
    from efficientft.methods._inject import WrapsTargets
    from efficientft.methods.capabilities import Capabilities

    own = {"dora", "kasa", "paca", "sora", "sift", "ssf", "loldu", "svfit"}
    assert {n for n in own if issubclass(METHODS.get(n), WrapsTargets)} == own
    assert not [n for n in own if "prepare" in METHODS.get(n).__dict__ and n not in ("paca", "ssf")]

    class Gain(torch.nn.Module):  # y = g ⊙ base(x), g = 1 at init
        def __init__(self, base):
            super().__init__()
            self.base, self.g = base, torch.nn.Parameter(torch.ones(base.out_features))

        def forward(self, x):
            return self.base(x) * self.g

        @torch.no_grad()
        def merged(self):
            self.base.weight.mul_(self.g[:, None])
            self.base.bias.mul_(self.g)
            return self.base

    class Gains(WrapsTargets):
        name = "gains"
        capabilities = Capabilities(merge=True)
        wrapper = Gain

        def wrap(self, base, targets):
            return Gain(base)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    x = torch.randint(1, 1000, (2, 8))
    m = Gains()
    model = m.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("classifier.")} == {
        f"bert.encoder.layer.{i}.attention.self.{w}.g" for i in range(2) for w in ("query", "value")}
    assert m.param_roles(model)["bert.encoder.layer.0.attention.self.value.g"] == "v"
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".g"):
                p.uniform_(0.5, 1.5)
        before = model(input_ids=x).logits
        merged = m.merge(model)
        assert not any(isinstance(mod, Gain) for mod in merged.modules())
        torch.testing.assert_close(merged(input_ids=x).logits, before)
