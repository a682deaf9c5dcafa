"""The defining property of each PEFT-backed method, checked against its paper's definition on tiny models.

The conformance matrix (test_conformance.py) checks what every method shares (training, λ groups, export, merge);
here each method is checked for what makes it that method: PiSSA's SVD, OLoRA's QR, EVA's activation SVD,
AdaLoRA's shrinking rank budget and regulariser, (IA)³'s vectors, rsLoRA's scale, LoRA+'s learning rates.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from efficientft.data import TrainBatches
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Context
from efficientft.models import head_modules, resolve_targets
from efficientft.train import prepare, train
from tests.conftest import tiny_config


def load(model_dir):
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)


def build(base, name, targets="qv", total_steps=0, **args):
    """``base`` prepared by method ``name``; returns (method, model, original weights of the targets)."""
    method = METHODS.get(name).from_config(args)
    resolved = resolve_targets(base, targets)
    original = {t.name: base.get_submodule(t.name).weight.detach().clone() for t in resolved}
    ctx = Context(heads=head_modules(base), total_steps=total_steps)
    return method, method.prepare(base, resolved, ctx), original


def adapted(model):
    """Adapted modules by their name in the base model (PEFT prefixes ``base_model.model.``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and (hasattr(m, "lora_A") or hasattr(m, "ia3_l"))}


def factors(layer):
    return layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach(), layer.scaling["default"]


def align_signs(got, want, dim):
    """Flip rows (dim=0) or columns (dim=1) of ``got`` to the sign of ``want`` (singular vectors have no sign)."""
    signs = torch.sign((got * want).sum(dim=1 - dim, keepdim=True))
    return got * signs


def batch_of(model_dir, n=4, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


PEFT_METHODS = ["lora", "rslora", "loraplus", "pissa", "olora", "eva", "adalora", "ia3"]


FAMILIES = {"bert": "qv", "llama": "qkvo", "gpt2": "o,ffn_up,ffn_down"}


@pytest.mark.parametrize("name,family", [(n, f) for f in FAMILIES for n in PEFT_METHODS
                                         if (n, f) != ("olora", "gpt2")])  # OLoRA refuses Conv1D (tested below)
def test_the_model_computes_the_base_model_at_init(name, family, tiny_bert, tiny_llama, tiny_gpt2):
    """B = 0 (LoRA, rsLoRA, LoRA+, EVA), E = 0 (AdaLoRA), vectors = 1 ((IA)³), or W_res + s·B₀A₀ = W (PiSSA, OLoRA),
    on nn.Linear and on GPT-2's transposed Conv1D."""
    model_dir = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[family]
    base = load(model_dir).eval()
    batch = batch_of(model_dir)
    with torch.no_grad():
        want = base(**batch).logits
    args = {} if name == "ia3" else {"rank": 4}
    _, model, _ = build(base, name, targets=FAMILIES[family], total_steps=10, **args)
    assert len(adapted(model)) == {"bert": 4, "llama": 8, "gpt2": 6}[family]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, want, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- PiSSA
def test_pissa_init_is_the_principal_part_of_w(tiny_bert):
    r = 4
    _, model, original = build(load(tiny_bert), "pissa", rank=r, alpha=8)
    layers = adapted(model)
    assert set(layers) == set(original) and len(layers) == 4
    for name, layer in layers.items():
        W = original[name]
        A, B, s = factors(layer)
        assert s == 2.0  # α/r
        W_res = layer.base_layer.weight.detach()
        torch.testing.assert_close(W_res + s * B @ A, W, atol=1e-6, rtol=0)
        assert not torch.allclose(W_res, W, atol=1e-3)  # the base really became the residual
        U, S, Vh = torch.linalg.svd(W)
        root = torch.sqrt(S[:r] / s)
        torch.testing.assert_close(align_signs(A, Vh[:r], 0), root[:, None] * Vh[:r], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(align_signs(B, U[:, :r], 1), U[:, :r] * root, atol=1e-5, rtol=1e-4)
        # what is left in the base is the rest of W's spectrum
        torch.testing.assert_close(torch.linalg.svdvals(W_res)[: 8], S[r: r + 8], atol=1e-5, rtol=1e-4)


def _decaying(base, targets, seed=0):
    """Give the targeted weights a decaying spectrum (as trained weights have): σ_i = 2^-i."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in resolve_targets(base, targets):
            w = base.get_submodule(t.name).weight
            U, _ = torch.linalg.qr(torch.randn(w.shape[0], w.shape[0], generator=g))
            V, _ = torch.linalg.qr(torch.randn(w.shape[1], w.shape[1], generator=g))
            k = min(w.shape)
            w.copy_(U[:, :k] @ torch.diag(2.0 ** -torch.arange(k, dtype=torch.float32)) @ V[:, :k].T)
    return base


def test_pissa_randomized_svd_is_close_to_exact(tiny_bert):
    exact = build(_decaying(load(tiny_bert), "qv"), "pissa", rank=4)[1]
    assert exact.peft_config["default"].init_lora_weights == "pissa"
    e = adapted(exact)
    errors = {}
    for niter in (1, 4):
        _, fast, original = build(_decaying(load(tiny_bert), "qv"), "pissa", rank=4, svd="randomized", niter=niter)
        assert fast.peft_config["default"].init_lora_weights == f"pissa_niter_{niter}"
        f = adapted(fast)
        for name in original:
            Ae, Be, s = factors(e[name])
            Af, Bf, _ = factors(f[name])
            errors[niter, name] = float((s * Bf @ Af - s * Be @ Ae).norm() / (s * Be @ Ae).norm())
            torch.testing.assert_close(f[name].base_layer.weight + s * Bf @ Af, original[name], atol=1e-6, rtol=0)
    for name in original:  # close to exact, and closer with more subspace iterations
        assert 0 < errors[4, name] < 1e-2 and errors[4, name] < errors[1, name], errors


@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_residual_methods_export_a_lora_delta_for_the_original_model(name, tiny_bert, tmp_path):
    method, model, original = build(load(tiny_bert), name, rank=4)
    with torch.no_grad():  # as if trained: move every factor and the head
        for q in model.parameters():
            if q.requires_grad:
                q.add_(0.05 * torch.randn_like(q))
    model.eval()
    batch = batch_of(tiny_bert)
    with torch.no_grad():
        want = model(**batch).logits
    method.export(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8 and config["init_lora_weights"] is True

    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load(tiny_bert), str(tmp_path)).eval()
    for target, layer in adapted(reloaded).items():  # the stock base weights, not the residual
        torch.testing.assert_close(layer.base_layer.weight, original[target], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lora", "pissa"])
def test_prepare_and_export_do_not_look_up_the_hub(name, tiny_bert, tmp_path):
    """A backbone served from the cache was named "None", so PEFT's save_embedding_layers="auto" tried the hub for
    config.json and warned, offline, on every PiSSA run of a sweep."""
    import warnings

    from efficientft.models.loading import clear_backbone_cache, load_model

    clear_backbone_cache()
    base = [load_model(str(tiny_bert), 2) for _ in range(3)][-1].model  # the third load comes from memory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method, model, _ = build(base, name, rank=4)
        method.export(model, tmp_path)
    hub = [str(w.message) for w in caught if "remote file" in str(w.message) or "config file" in str(w.message)]
    assert hub == []
    assert (tmp_path / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------- OLoRA
def test_olora_init_is_the_qr_of_w(tiny_llama):
    r = 4
    _, model, original = build(load(tiny_llama), "olora", targets="qkv", rank=r)
    layers = adapted(model)
    assert len(layers) == 6  # q, k, v of 2 layers (k, v are 16 x 32 here: grouped-query attention)
    for name, layer in layers.items():
        W = original[name]
        A, B, s = factors(layer)
        assert B.shape == (W.shape[0], r) and A.shape == (r, W.shape[1])
        torch.testing.assert_close(B.T @ B, torch.eye(r), atol=1e-5, rtol=0)  # orthonormal columns
        assert torch.equal(torch.tril(A, diagonal=-1), torch.zeros_like(A))  # R is upper trapezoidal
        Q, R = torch.linalg.qr(W)
        torch.testing.assert_close(B, Q[:, :r], atol=1e-6, rtol=0)
        torch.testing.assert_close(A, R[:r], atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.base_layer.weight + s * B @ A, W, atol=1e-6, rtol=0)


def test_olora_refuses_transposed_conv1d_weights(tiny_gpt2):
    with pytest.raises(ConfigError, match="cannot adapt transposed Conv1D weights .*mlp.c_fc"):
        build(load(tiny_gpt2), "olora", targets="ffn", rank=4)


# ---------------------------------------------------------------------------------------------------- EVA
def _layer_inputs(model, batches):
    """Every adapted layer's inputs on the non-padding tokens of ``batches``, with the adapters off."""
    layers = adapted(model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen[n].append(inp[0].detach()))
             for n, m in layers.items()]
    try:
        with torch.no_grad(), model.disable_adapter():
            for b in batches:
                model(**{k: v for k, v in b.items() if k != "labels"})
                keep = b["attention_mask"].bool()
                for n in layers:
                    seen[n][-1] = seen[n][-1][keep]
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(x) for n, x in seen.items()}


def test_eva_a_spans_the_top_singular_vectors_of_each_layers_inputs(tiny_bert):
    r, n_batches = 4, 4
    cfg = tiny_config(tiny_bert, method="eva", targets="qv", max_train=64, batch_size=16,
                      method_args={"rank": r, "init_batches": n_batches})
    p = prepare(cfg)  # the loop runs init_from_data on its own training batches
    p.model.eval()
    batches = list(itertools.islice(TrainBatches(p.train, cfg.batch_size, p.info["pad_id"], cfg.seed).forever(),
                                    n_batches))
    inputs = _layer_inputs(p.model, batches)
    torch.manual_seed(0)
    random_lora = adapted(build(load(tiny_bert), "lora", rank=r)[1])
    for name, layer in adapted(p.model).items():
        A = layer.lora_A["default"].weight.detach()
        X = inputs[name]
        assert X.shape[0] > 1000  # enough tokens for a stable decomposition
        _, _, Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)  # PEFT's EVA is a (centred) PCA
        k = A.shape[0]
        assert 1 <= k <= 2 * r
        torch.testing.assert_close(A @ A.T, torch.eye(k), atol=1e-4, rtol=0)  # unit, orthogonal rows
        overlap = float((A @ Vh[:k].T).pow(2).sum() / k)  # 1: the same subspace
        assert overlap > 0.95, f"{name}: EVA's A shares only {overlap:.3f} of the top-{k} input subspace"
        assert abs(float(A[0] @ Vh[0])) > 0.999
        assert not layer.lora_B["default"].weight.any()  # B = 0: the model still computes W at init
        Ar = random_lora[name].lora_A["default"].weight.detach()
        Ar = Ar / Ar.norm(dim=1, keepdim=True)
        assert float((Ar @ Vh[:r].T).pow(2).sum() / r) < 0.5  # a random LoRA init does not
    ranks = {n: m.lora_A["default"].weight.shape[0] for n, m in adapted(p.model).items()}
    assert sum(ranks.values()) == 4 * r  # redistribution keeps the budget
    assert p.method.trainable_parameters(p.model) == sum(k * (32 + 32) for k in ranks.values()) + (32 * 2 + 2)


def test_eva_takes_a_bounded_number_of_batches_and_ignores_labels(tiny_bert):
    method, model, _ = build(load(tiny_bert), "eva", rank=4, init_batches=3, rho=1)
    taken = 0

    def forever():  # the loop's batches: endless, with one label per sequence (16 sequences of 16 tokens)
        nonlocal taken
        for seed in itertools.count():
            taken += 1
            yield {**batch_of(tiny_bert, n=16, length=16, seed=seed), "labels": torch.ones(16, dtype=torch.long)}

    before = {n: m.lora_A["default"].weight.detach().clone() for n, m in adapted(model).items()}
    method.init_from_data(model, forever())
    assert taken == 3
    for n, m in adapted(model).items():
        assert m.lora_A["default"].weight.shape == (4, 32)  # rho = 1: no redistribution
        assert not torch.allclose(m.lora_A["default"].weight, before[n])


def test_eva_without_enough_tokens_stops_with_a_clear_error(tiny_bert):
    method, model, _ = build(load(tiny_bert), "eva", rank=4, init_batches=1)
    tiny = {"input_ids": torch.tensor([[101, 2000, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
            "labels": torch.tensor([1])}
    with pytest.raises(ConfigError, match="did not converge in 100 passes over 1 batch"):
        method.init_from_data(model, itertools.repeat(tiny))


# ---------------------------------------------------------------------------------------------------- AdaLoRA
def test_adalora_budget_falls_from_initial_to_target_along_the_cubic_schedule(tiny_bert):
    total, tinit, tfinal, r = 12, 2, 3, 2
    cfg = tiny_config(tiny_bert, method="adalora", targets="qv", steps=total, warmup_ratio=0.0, lr=5e-3,
                      method_args={"rank": r, "tinit": tinit, "tfinal": tfinal})
    p = prepare(cfg)
    init_r = 3  # ceil(1.5 r)
    assert p.method.active_ranks(p.model) == {n: init_r for n in adapted(p.model)}
    budgets, hook = [], p.method.after_step

    def after_step(model, step):
        hook(model, step)
        budgets.append(sum(p.method.active_ranks(model).values()))

    p.method.after_step = after_step
    train(p, progress=False)
    n = 4  # q and v of 2 layers
    b0, bT = n * init_r, n * r
    expected = []
    for step in range(1, total + 1):
        if step <= tinit:
            expected.append(b0)
        elif step >= total - tfinal:
            expected.append(bT)
        else:  # the cubic schedule: b(t) = b(T) + (b(0) - b(T)) (1 - (t - t_i) / (T - t_i - t_f))^3
            expected.append(int(bT + (b0 - bT) * (1 - (step - tinit) / (total - tfinal - tinit)) ** 3))
    assert budgets == expected
    assert len(set(budgets)) >= 3  # it passed through intermediate budgets
    # the pruned singular values are exactly zero; the kept ones are not
    E = {n: m.lora_E["default"].detach().view(-1) for n, m in adapted(p.model).items()}
    assert sum(int((e != 0).sum()) for e in E.values()) == bT
    assert sum(p.method.active_ranks(p.model).values()) == bT


def test_adalora_loss_has_the_orthogonality_regulariser_and_counts_are_exact(tiny_bert):
    method, model, _ = build(load(tiny_bert), "adalora", total_steps=10, rank=4, orth_reg_weight=0.3)
    init_r = 6
    # A (r x 32), B (32 x r), E (r) on q and v of 2 layers, plus the head; ranknum does not train
    assert method.trainable_parameters(model) == 4 * init_r * (32 + 32 + 1) + (32 * 2 + 2)
    assert not any(q.requires_grad for n, q in model.named_parameters() if "ranknum" in n)
    batch = {**batch_of(None), "labels": torch.tensor([0, 1, 1, 0])}
    model.eval()  # no dropout
    out = model(**batch)
    ce = F.cross_entropy(out.logits, batch["labels"])
    reg = []
    for layer in adapted(model).values():
        A, B = layer.lora_A["default"], layer.lora_B["default"]
        reg += [torch.linalg.matrix_norm(A @ A.T - torch.eye(init_r)), torch.linalg.matrix_norm(B.T @ B - torch.eye(init_r))]
    expected = ce + 0.3 * torch.stack(reg).mean()
    assert float(torch.stack(reg).mean()) > 0.1  # the regulariser is not negligible at init
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)


def test_adalora_schedule_must_leave_a_budgeting_phase(tiny_bert):
    cfg = tiny_config(tiny_bert, method="adalora", steps=4, method_args={"rank": 4, "tinit": 2, "tfinal": 2})
    with pytest.raises(ConfigError, match=r"tinit=2 and tfinal=2 steps leave no step .* run of 4 steps"):
        prepare(cfg)
    p = prepare(cfg.replace(steps=20, method_args={"rank": 4, "tinit": 0.25, "tfinal": 0.5}))
    config = p.model.peft_config["default"]
    assert (config.tinit, config.tfinal, config.total_step, config.init_r, config.target_r) == (5, 10, 20, 6, 4)


# ---------------------------------------------------------------------------------------------------- (IA)³
def test_ia3_trains_only_scaling_vectors_initialised_to_ones(tiny_bert):
    base = load(tiny_bert).eval()
    batch = batch_of(tiny_bert)
    with torch.no_grad():
        want = base(**batch).logits
    method, model, _ = build(base, "ia3", targets="v,ffn_down")
    model.eval()
    trainable = {n: q for n, q in model.named_parameters() if q.requires_grad}
    vectors = {n: q for n, q in trainable.items() if ".ia3_l." in n}
    assert set(trainable) - set(vectors) == {n for n in trainable if ".classifier." in n}
    shapes = sorted(tuple(q.shape) for q in vectors.values())
    assert shapes == [(1, 64)] * 2 + [(32, 1)] * 2  # ffn_down scales its 64 inputs (l_ff), W_v its 32 outputs
    assert all(torch.equal(q, torch.ones_like(q)) for q in vectors.values())
    assert method.trainable_parameters(model) == 2 * (32 + 64) + (32 * 2 + 2)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, atol=0, rtol=0)
    # trained vectors change the output, and merging them into the weights keeps it
    with torch.no_grad():
        for q in vectors.values():
            q.copy_(3 * torch.rand_like(q))
        moved = model(**batch).logits
        assert (moved - want).abs().max() > 5e-5  # the tiny model's logits are ~1e-2
        torch.testing.assert_close(method.merge(model)(**batch).logits, moved, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- rsLoRA, LoRA+
def test_rslora_scales_by_alpha_over_sqrt_rank(tiny_bert):
    for rank, alpha, want in [(16, None, 8 / 4), (4, 6.0, 6 / 2)]:
        args = {"rank": rank} if alpha is None else {"rank": rank, "alpha": alpha}
        _, model, _ = build(load(tiny_bert), "rslora", **args)
        scales = [layer.scaling["default"] for layer in adapted(model).values()]
        assert len(scales) == 4 and scales == pytest.approx([want] * 4)
    _, plain, _ = build(load(tiny_bert), "lora", rank=16)
    assert {layer.scaling["default"] for layer in adapted(plain).values()} == {1.0}


def test_loraplus_gives_b_ratio_times_the_rate_and_composes_with_lambda(tiny_bert):
    lr, lam, ratio = 1e-3, 4.0, 16.0
    p = prepare(tiny_config(tiny_bert, method="loraplus", targets="qv", lr=lr, lr_ratio=lam, warmup_ratio=0.0,
                            method_args={"rank": 4}))
    rate = {n: g["initial_lr"] for g in p.optimizer.param_groups for n in g["names"]}
    assert len(rate) == sum(1 for q in p.model.parameters() if q.requires_grad)
    expect = {("value", "lora_B"): lr * lam * ratio, ("value", "lora_A"): lr * lam,
              ("query", "lora_B"): lr * ratio, ("query", "lora_A"): lr}
    for n, got in rate.items():
        key = next(((m, f) for m, f in expect if f".{m}.{f}." in n), None)
        want = expect[key] if key else lr  # the head
        assert got == pytest.approx(want, rel=1e-12), n
    assert sorted({round(v / lr, 9) for v in rate.values()}) == [1.0, 4.0, 16.0, 64.0]


# ---------------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("name,args,message", [
    ("pissa", {"svd": "fast"}, "svd must be one of exact, randomized, got 'fast'"),
    ("pissa", {"niter": -1}, "niter must be a non-negative integer, got -1"),
    ("loraplus", {"ratio": 0}, "ratio must be a positive number (B's learning rate over A's), got 0.0"),
    ("eva", {"rho": 0.5}, "rho must be in [1, 1000), got 0.5"),
    ("eva", {"tau": 0}, "tau must be in (0, 1], got 0.0"),
    ("eva", {"init_batches": 0}, "init_batches must be a positive integer, got 0"),
    ("adalora", {"rank": 8, "init_r": 4}, "init_r (4) must be at least the target rank (8)"),
    ("adalora", {"tinit": 2.5}, "tinit must be a fraction of the run in [0, 1) or a whole number of steps, got 2.5"),
    ("adalora", {"beta1": 1}, "beta1 must be in (0, 1), got 1.0"),
    ("adalora", {"orth_reg_weight": -1}, "orth_reg_weight must be a number >= 0, got -1.0"),
    ("adalora", {"delta_t": 0}, "delta_t must be a positive integer, got 0"),
    ("ia3", {"rank": 4}, "method 'ia3' takes no argument 'rank'"),
    ("rslora", {"rank": "x"}, "rank must be an integer, got 'x'"),
])
def test_bad_method_arguments_are_config_errors(name, args, message):
    with pytest.raises(ConfigError) as e:
        METHODS.get(name).from_config(args)
    assert message in str(e.value)


def test_initial_rank_must_fit_the_layers(tiny_bert):
    with pytest.raises(ConfigError, match=r"rank 40 is larger than .*query allows .*at most 32\). EVA may give one "
                                          r"layer up to round\(rho·rank\) = round\(2.0·20\) components"):
        build(load(tiny_bert), "eva", rank=20, rho=2)
    with pytest.raises(ConfigError, match=r"rank 36 is larger .* AdaLoRA starts at init_r = 36"):
        build(load(tiny_bert), "adalora", rank=24, total_steps=10)
