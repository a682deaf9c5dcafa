"""The defining property of each PEFT tuner registered as a method (issue 14), on tiny BERT and LLaMA models.

The conformance matrix (test_conformance.py) checks what every method shares; here each tuner is checked for what
its paper defines: VeRA's frozen shared projections, LoHa's Hadamard and LoKr's Kronecker products, the orthogonal
transforms of OFT, BOFT and HRA (row angles kept), FourierFT's inverse DFT, RandLoRA's full rank, SHiRA's fixed
mask, C3A's circulant blocks, MiSS's shared shard, LN tuning's norms, the prompt-type methods' virtual tokens and
prefixes, LoRA-FA's frozen A and projected gradient. Trained parameters are perturbed at random before a check, so
that it does not pass merely because an update starts at zero.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Context
from efficientft.models import head_modules, resolve_targets
from efficientft.train import prepare
from tests.conftest import tiny_config

HIDDEN, LAYERS, HEAD_BERT = 32, 2, 32 * 2 + 2  # tiny_bert: hidden 32, 2 layers, classifier 32→2 with bias


def load(model_dir):
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)


def build(model_dir, name, targets="qv", task_type="SEQ_CLS", base=None, **args):
    """(method, model prepared by ``name``, the resolved targets) on a fresh copy of ``model_dir``."""
    base = base if base is not None else load(model_dir)
    method = METHODS.get(name).from_config(args)
    resolved = resolve_targets(base, targets)
    torch.manual_seed(0)
    model = method.prepare(base, resolved, Context(heads=head_modules(base), peft_task_type=task_type))
    return method, model, resolved


def layer(model, suffix):
    """The PEFT layer that wraps the module named ``...suffix`` (first layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return next(m for n, m in model.named_modules() if n.endswith(suffix) and isinstance(m, BaseTunerLayer))


def perturb(model, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def head_count(model):
    return sum(p.numel() for n, p in trainable(model).items() if "classifier" in n or "score" in n)


def batch(n=2, length=10, seed=0):
    ids = torch.randint(1000, 2000, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def merged_weight(model, suffix):
    """W after folding the adapter in (PEFT's own merge), and the base W before it."""
    lay = layer(model, suffix)
    w0 = lay.get_base_layer().weight.detach().clone()
    lay.merge()
    w = lay.get_base_layer().weight.detach().clone()
    lay.unmerge()
    return w0, w


def assert_orthogonal(r):
    torch.testing.assert_close(r.T @ r, torch.eye(r.shape[0]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------ VeRA
def test_vera_trains_only_the_scaling_vectors_over_frozen_random_projections_shared_by_all_layers(tiny_bert):
    _, model, targets = build(tiny_bert, "vera", rank=8)
    names = set(trainable(model))
    assert not any("vera_A" in n or "vera_B" in n for n, _ in model.named_parameters())  # buffers, never trained
    # exactly d (r) and b (d_out) per adapted module, + the head
    assert sum(p.numel() for p in trainable(model).values()) == len(targets) * (8 + HIDDEN) + HEAD_BERT
    assert {n.split(".")[-2] for n in names if "vera" in n} == {"vera_lambda_b", "vera_lambda_d"}
    q, v = layer(model, "layer.0.attention.self.query"), layer(model, "layer.1.attention.self.value")
    assert q.vera_A["default"].data_ptr() == v.vera_A["default"].data_ptr()  # one pair for every layer
    assert q.vera_B["default"].data_ptr() == v.vera_B["default"].data_ptr()
    assert not q.vera_lambda_b["default"].any()  # b = 0: ΔW = 0 at init
    perturb(model)
    d, b = v.vera_lambda_d["default"], v.vera_lambda_b["default"]
    want = torch.diag(b) @ v.vera_B["default"][:HIDDEN] @ torch.diag(d) @ v.vera_A["default"][:, :HIDDEN]
    w0, w = merged_weight(model, "layer.1.attention.self.value")
    torch.testing.assert_close(w - w0, want, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ LoHa, LoKr
def test_loha_update_is_the_hadamard_product_of_two_low_rank_products(tiny_bert):
    _, model, targets = build(tiny_bert, "loha", rank=4, alpha=8)
    assert sum(p.numel() for p in trainable(model).values()) == len(targets) * 2 * 4 * 2 * HIDDEN + HEAD_BERT
    w0, w = merged_weight(model, "layer.0.attention.self.value")
    assert torch.equal(w, w0)  # one factor is zero at init
    perturb(model)
    lay = layer(model, "layer.0.attention.self.value")
    f = {k: getattr(lay, f"hada_{k}")["default"].detach() for k in ("w1_a", "w1_b", "w2_a", "w2_b")}
    want = (8 / 4) * (f["w1_a"] @ f["w1_b"]) * (f["w2_a"] @ f["w2_b"])
    w0, w = merged_weight(model, "layer.0.attention.self.value")
    torch.testing.assert_close(w - w0, want, atol=1e-6, rtol=1e-5)
    assert torch.linalg.matrix_rank(want) > 4  # higher than either factor's rank r


def test_lokr_update_is_a_kronecker_product(tiny_bert):
    _, model, _ = build(tiny_bert, "lokr", rank=4, alpha=4)
    perturb(model)
    lay = layer(model, "layer.0.attention.self.query")
    w1, w2 = lay.lokr_w1["default"].detach(), lay.lokr_w2["default"].detach()
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    torch.testing.assert_close(w - w0, torch.kron(w1, w2), atol=1e-6, rtol=1e-5)
    assert w1.numel() + w2.numel() < HIDDEN * HIDDEN / 4


@pytest.mark.parametrize(("rank", "alpha", "both"), [(4, 8, False), (1, 3, True)])
def test_lokr_output_moves_by_alpha_over_r_times_the_kronecker_product(tiny_bert, rank, alpha, both):
    """ΔW = (α/r) · W₁ ⊗ W₂ (Yeh et al. 2024, arXiv 2309.14859), read from the layer's output, with W₁, W₂ rebuilt
    from whichever factors PEFT stores (W₂ = B A below its size; W₁ too under decompose_both)."""
    _, model, _ = build(tiny_bert, "lokr", rank=rank, alpha=alpha, decompose_both=both)
    perturb(model)
    lay = layer(model, "layer.0.attention.self.query")

    def factor(k):
        full = getattr(lay, f"lokr_{k}")
        if "default" in full:
            return full["default"].detach()
        return getattr(lay, f"lokr_{k}_a")["default"].detach() @ getattr(lay, f"lokr_{k}_b")["default"].detach()

    if both:
        assert "default" in lay.lokr_w1_a  # W₁ really is factorised here
    want = (alpha / rank) * torch.kron(factor("w1"), factor("w2"))
    x = torch.randn(5, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(lay(x) - lay.get_base_layer()(x), x @ want.T, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------- OFT, BOFT, HRA (orthogonal)
def test_oft_rotates_with_an_orthogonal_block_diagonal_matrix_that_keeps_row_angles(tiny_llama):
    _, model, targets = build(tiny_llama, "oft", block_size=8)
    per_block = 8 * 7 // 2  # a skew-symmetric 8×8 block
    adapter = sum(p.numel() for n, p in trainable(model).items() if "oft_" in n)
    assert adapter == len(targets) * (HIDDEN // 8) * per_block
    perturb(model, scale=0.5)
    lay = layer(model, "layers.0.self_attn.v_proj")
    with torch.no_grad():
        r = lay.oft_R["default"](torch.eye(HIDDEN))  # the transform applied to the inputs
    assert_orthogonal(r)
    assert not torch.allclose(r, torch.eye(HIDDEN), atol=1e-2)
    assert torch.count_nonzero(r[:8, 8:]) == 0  # block-diagonal
    w0, w = merged_weight(model, "layers.0.self_attn.v_proj")
    torch.testing.assert_close(w @ w.T, w0 @ w0.T, atol=1e-5, rtol=1e-4)  # norms and angles of rows kept
    assert (w - w0).abs().max() > 1e-2


def test_boft_is_a_product_of_orthogonal_butterfly_factors_with_a_row_scale(tiny_bert):
    _, model, _ = build(tiny_bert, "boft", block_size=4, n_butterfly_factor=2)
    perturb(model, scale=0.5)
    lay = layer(model, "layer.0.attention.self.value")
    with torch.no_grad():
        lay.boft_s["default"].uniform_(0.5, 1.5)  # a positive scale per output row
        r, s = lay.get_delta_weight("default")
    assert_orthogonal(r.squeeze(0) if r.dim() == 3 else r)
    r = r.reshape(HIDDEN, HIDDEN)
    outside = torch.ones(HIDDEN, HIDDEN, dtype=torch.bool)
    for i in range(0, HIDDEN, 4):
        outside[i:i + 4, i:i + 4] = False
    assert (r.abs() > 1e-6)[outside].any()  # two butterfly factors mix the blocks: not OFT's block diagonal
    assert lay.boft_R["default"].shape[0] == 2  # PEFT kept both factors (it drops to one without its CUDA kernel)
    w0, w = merged_weight(model, "layer.0.attention.self.value")
    cos = torch.nn.functional.normalize
    torch.testing.assert_close(cos(w, dim=1) @ cos(w, dim=1).T, cos(w0, dim=1) @ cos(w0, dim=1).T, atol=1e-5,
                               rtol=1e-4)  # angles between rows kept; s rescales rows
    assert not torch.allclose(w.norm(dim=1), w0.norm(dim=1))


def test_boft_counts_the_skew_part_of_each_block_and_leaves_peft_unpatched(tiny_bert):
    import peft.tuners.boft.layer as peft_boft

    kernel, fetch = peft_boft.FastBlockDiag, peft_boft.get_fbd_cuda
    forward, delta = peft_boft.Linear.forward, peft_boft.Linear.get_delta_weight
    method, model, targets = build(tiny_bert, "boft", block_size=4, n_butterfly_factor=2)
    # Liu et al. 2024 (arXiv 2311.06243): a b×b block acts through its skew-symmetric part, b(b−1)/2 free numbers
    per_module = 2 * (HIDDEN // 4) * (4 * 3 // 2) + HIDDEN  # m factors × d/b blocks × 6, plus the row scales s
    assert method.trainable_parameters(model) == len(targets) * per_module + HEAD_BERT
    assert sum(p.numel() for p in trainable(model).values()) == len(targets) * (2 * 8 * 16 + HIDDEN) + HEAD_BERT
    # PEFT's module and classes are as they were: only this model's layers compute block_diag with torch
    assert (peft_boft.FastBlockDiag, peft_boft.get_fbd_cuda) == (kernel, fetch)
    for obj in (kernel, fetch, forward, delta):  # PEFT's own, whatever ran before this test
        assert obj.__module__ == "peft.tuners.boft.layer" and obj.__name__ != "<lambda>"
    assert (peft_boft.Linear.forward, peft_boft.Linear.get_delta_weight) == (forward, delta)
    perturb(model, scale=0.5)
    lay = layer(model, "layer.0.attention.self.value")
    x = torch.randn(3, HIDDEN)
    with torch.no_grad():
        r, s = lay.get_delta_weight("default")
        w0 = lay.get_base_layer().weight
        torch.testing.assert_close(lay(x), x @ r @ w0.T * s.T + lay.get_base_layer().bias, atol=1e-5, rtol=1e-4)


def test_hra_is_a_product_of_householder_reflections_identity_at_init(tiny_bert):
    _, model, targets = build(tiny_bert, "hra", rank=4)
    assert sum(p.numel() for n, p in trainable(model).items() if "hra_u" in n) == len(targets) * 4 * HIDDEN
    lay = layer(model, "layer.0.attention.self.query")
    with torch.no_grad():
        torch.testing.assert_close(lay.get_delta_weight("default"), torch.eye(HIDDEN), atol=1e-6, rtol=0)
        perturb(model)
        h = lay.get_delta_weight("default")
        u = torch.nn.functional.normalize(lay.hra_u["default"], dim=0)
    want = torch.eye(HIDDEN)
    for i in range(4):
        want = want @ (torch.eye(HIDDEN) - 2 * u[:, i:i + 1] @ u[:, i:i + 1].T)
    torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)
    assert_orthogonal(h)
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    torch.testing.assert_close(w @ w.T, w0 @ w0.T, atol=1e-5, rtol=1e-4)
    assert torch.linalg.matrix_rank(w - w0) <= 4  # an adaptive rank-r update as well


# ---------------------------------------------------------------------------------------- FourierFT, C3A, MiSS
def test_fourierft_update_is_the_inverse_dft_of_n_coefficients_at_fixed_positions(tiny_bert):
    _, model, targets = build(tiny_bert, "fourierft", n_frequency=40, scaling=10.0)
    assert sum(p.numel() for n, p in trainable(model).items() if "fourierft" in n) == len(targets) * 40
    q, v = layer(model, "layer.0.attention.self.query"), layer(model, "layer.1.attention.self.value")
    assert torch.equal(q.indices["default"], v.indices["default"])  # the same seeded positions everywhere
    perturb(model)
    spectrum = torch.zeros(HIDDEN, HIDDEN, dtype=torch.complex64)
    idx = q.indices["default"]
    spectrum[idx[0], idx[1]] = q.fourierft_spectrum["default"].detach().to(torch.complex64)
    want = 10.0 * torch.fft.ifft2(spectrum).real
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    torch.testing.assert_close(w - w0, want, atol=1e-6, rtol=1e-5)
    assert torch.linalg.matrix_rank(want) > 8  # a few coefficients, a dense high-rank update


def test_c3a_update_is_made_of_circulant_blocks_a_circular_convolution(tiny_bert):
    b = 8
    _, model, targets = build(tiny_bert, "c3a", block_size=b)
    assert sum(p.numel() for n, p in trainable(model).items() if "c3a" in n) == len(targets) * HIDDEN * HIDDEN // b
    perturb(model)
    lay = layer(model, "layer.0.attention.self.value")
    kernel = lay.c3a_kernel["default"].detach()  # (d_out/b, d_in/b, b)
    w0, w = merged_weight(model, "layer.0.attention.self.value")
    delta = (w - w0) * HIDDEN  # PEFT divides by d_in
    x = torch.randn(HIDDEN)
    want = torch.zeros(HIDDEN)
    for i in range(HIDDEN // b):
        for j in range(HIDDEN // b):
            block = delta[i * b:(i + 1) * b, j * b:(j + 1) * b]
            torch.testing.assert_close(block, torch.roll(torch.roll(block, 1, 0), 1, 1), atol=1e-5, rtol=1e-5)
            xj, k = x[j * b:(j + 1) * b], kernel[i, j]
            torch.testing.assert_close(block[0], k, atol=1e-5, rtol=1e-5)  # the kernel is the first row
            want[i * b:(i + 1) * b] += torch.stack([sum(k[s] * xj[(t + s) % b] for s in range(b)) for t in range(b)])
    torch.testing.assert_close(delta @ x, want, atol=1e-4, rtol=1e-4)  # Σ_j (x_j circularly correlated with k_ij)


def test_miss_update_tiles_one_shared_shard_across_column_blocks(tiny_bert):
    _, model, targets = build(tiny_bert, "miss", rank=4)
    assert sum(p.numel() for n, p in trainable(model).items() if "miss" in n) == len(targets) * 4 * HIDDEN
    perturb(model)
    d = layer(model, "layer.0.attention.self.query").miss_block["default"].detach()  # (r, d_out)
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    torch.testing.assert_close(w - w0, d.T.repeat(1, HIDDEN // 4), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- RandLoRA, SHiRA
def test_randlora_reaches_full_rank_from_frozen_shared_random_bases(tiny_bert):
    _, model, targets = build(tiny_bert, "randlora", rank=4)
    assert not any("randlora_A" in n or "randlora_B" in n for n, _ in model.named_parameters())
    n_bases = HIDDEN // 4
    per_module = 4 * n_bases + n_bases * HIDDEN  # Λ (r per basis) and Γ (min(d) per basis)
    assert sum(p.numel() for n, p in trainable(model).items() if "randlora" in n) == len(targets) * per_module
    q, v = layer(model, "layer.0.attention.self.query"), layer(model, "layer.1.attention.self.value")
    assert q.randlora_A["default"].data_ptr() == v.randlora_A["default"].data_ptr()
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    assert torch.equal(w, w0)
    perturb(model)
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    assert torch.linalg.matrix_rank(w - w0) == HIDDEN  # full rank, with bases of rank 4


def test_randlora_delta_is_the_papers_sum_of_scaled_random_bases(tiny_bert):
    """ΔW = (α/r) Σ_i B_i Λ_i A Γ_i (arXiv 2502.00987, Eq. 3 with PEFT's shared "unique base" A): Λ_i = diag(λ[:, i])
    scales the r directions of term i, Γ_i = diag(γ[i]) the input features; the default α = 20·r."""
    r, n = 4, HIDDEN // 4
    _, model, _ = build(tiny_bert, "randlora", rank=r)  # alpha None: 20·r, so α/r = 20
    perturb(model)
    lay = layer(model, "layer.0.attention.self.query")
    a = lay.randlora_A["default"][:, 0, :HIDDEN]  # (r, d): one A for every term
    b = lay.randlora_B["default"][:HIDDEN, :n, :].flatten(1)  # (d_out, N·r): column k·N + i is B_i's k-th
    lam, gam = lay.randlora_lambda["default"].detach(), lay.randlora_gamma["default"].detach()  # (r, N), (N, d)
    terms = [b[:, [k * n + i for k in range(r)]] @ torch.diag(lam[:, i]) @ a @ torch.diag(gam[i]) for i in range(n)]
    want = 20.0 * sum(terms)
    x = torch.randn(5, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(lay(x) - lay.get_base_layer()(x), x @ want.T, atol=1e-5, rtol=1e-4)
    w0, w = merged_weight(model, "layer.0.attention.self.query")
    torch.testing.assert_close(w - w0, want, atol=1e-5, rtol=1e-4)


def test_shira_trains_a_fixed_sparse_mask_of_entries(tiny_bert):
    _, model, targets = build(tiny_bert, "shira", rank=2)
    k = 2 * (HIDDEN + HIDDEN)
    assert sum(p.numel() for n, p in trainable(model).items() if "shira" in n) == len(targets) * k
    perturb(model)
    w0, w = merged_weight(model, "layer.0.attention.self.value")
    changed = (w - w0) != 0
    assert changed.sum() == k
    perturb(model, seed=2)
    w0, w2 = merged_weight(model, "layer.0.attention.self.value")
    assert torch.equal((w2 - w0) != 0, changed)  # the same entries: the mask is fixed
    assert torch.linalg.matrix_rank(w - w0) > 2  # sparse, but of higher rank than r


# ------------------------------------------------------------------------------------------------ LN tuning
def test_ln_tuning_trains_only_normalisation_layers_and_the_head(tiny_bert, tiny_llama):
    for model_dir, per_norm in ((tiny_bert, 2 * HIDDEN), (tiny_llama, HIDDEN)):  # γ, β; RMSNorm: γ only
        _, model, _ = build(model_dir, "ln_tuning")
        norms = [n for n, m in load(model_dir).named_modules() if "norm" in type(m).__name__.lower()]
        body = {n: p for n, p in trainable(model).items() if "classifier" not in n and "score" not in n}
        assert body and all("norm" in n.lower() for n in body), sorted(body)[:3]
        assert sum(p.numel() for p in body.values()) == len(norms) * per_norm


# --------------------------------------------------------------------------------------- prompt-type methods
def first_layer_lengths(model, family="bert"):
    """Sequence lengths seen by the first transformer layer's input (hook), for one forward of ``batch()``."""
    seen = []
    inner = model.get_base_model()
    block = inner.bert.encoder.layer[0] if family == "bert" else inner.model.layers[0]
    handle = block.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).shape[1]),
                                             with_kwargs=True)
    with torch.no_grad():
        model(**batch(length=10))
    handle.remove()
    return seen


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_prompt_methods_grow_the_sequence_by_n_virtual_tokens_and_leave_the_weights(name, tiny_bert):
    base = load(tiny_bert)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    _, model, _ = build(tiny_bert, name, base=base, num_virtual_tokens=5)
    assert first_layer_lengths(model.eval()) == [10 + 5]
    body = {n: p for n, p in trainable(model).items() if "classifier" not in n}
    assert all(n.startswith("prompt_encoder.") for n in body), sorted(body)
    emb = 5 * HIDDEN
    want = emb if name == "prompt_tuning" else emb + (HIDDEN * 128 + 128) + (128 * 128 + 128) + (128 * HIDDEN + HIDDEN)
    assert sum(p.numel() for p in body.values()) == want  # P-tuning: the embeddings and its MLP encoder
    # one optimizer step: the base weights do not move
    opt = torch.optim.SGD(trainable(model).values(), lr=1.0)
    model(**batch(), labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    for n, p in base.named_parameters():
        if n in before and "classifier" not in n:
            assert torch.equal(p, before[n]), n


def test_prefix_tuning_gives_every_layer_n_key_value_positions(tiny_bert, tiny_llama):
    _, model, _ = build(tiny_bert, "prefix_tuning", num_virtual_tokens=5)
    assert first_layer_lengths(model.eval()) == [10]  # the input does not grow
    pkv = model.get_prompt(batch_size=2)
    assert len(pkv.layers if hasattr(pkv, "layers") else pkv) == LAYERS
    keys = pkv.layers[0].keys if hasattr(pkv, "layers") else pkv[0][0]
    assert keys.shape[-2] == 5  # n prefix positions
    body = sum(p.numel() for n, p in trainable(model).items() if "classifier" not in n)
    assert body == 5 * LAYERS * 2 * HIDDEN
    _, llama, _ = build(tiny_llama, "prefix_tuning", num_virtual_tokens=5)
    kv_dim = HIDDEN // 4 * 2  # grouped-query attention: 2 key/value heads of 8
    assert sum(p.numel() for n, p in trainable(llama).items() if "score" not in n) == 5 * LAYERS * 2 * kv_dim


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory, minilm_dir):
    """A classifier whose forward (and its backbone's) takes no past_key_values, as BERT's under transformers 5.25."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-distilbert")
    DistilBertForSequenceClassification(cfg).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(path))
    return path


def test_prefix_tuning_refuses_a_classifier_that_takes_no_past_key_values_in_one_line(tiny_distilbert, capsys,
                                                                                      monkeypatch):
    from efficientft.cli import main

    monkeypatch.setattr(METHODS.get("prefix_tuning"), "prepare",
                        lambda *a, **k: pytest.fail("prepared the method before refusing"))
    code = main(["run", "--task", "rte", "--model", str(tiny_distilbert), "--method", "prefix_tuning", "--steps",
                 "2", "--max-train", "8", "--max-eval", "4", "--batch-size", "4", "--no-progress", "--store",
                 str(tiny_distilbert.parent / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("eft run: error: method 'prefix_tuning' cannot train DistilBertForSequenceClassification: "
                          "it feeds the model past_key_values, which neither its forward nor its backbone's "
                          "(DistilBertModel) takes")


@pytest.fixture(scope="module")
def tiny_albert(tmp_path_factory, minilm_dir):
    """ALBERT's embeddings (16 wide) are narrower than its hidden size (32): a virtual token is an embedding."""
    from transformers import AlbertConfig, AlbertForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    cfg = AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-albert")
    AlbertForSequenceClassification(cfg).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_prompt_tokens_are_as_wide_as_the_input_embeddings(name, tiny_albert):
    """Was: "Sizes of tensors must match" at the first step (PEFT sized the tokens by hidden_size)."""
    from efficientft.train import run

    rec = run(tiny_config(tiny_albert, method=name, method_args={"num_virtual_tokens": 5}, steps=2,
                          max_train=16, max_eval=8, max_length=32))
    encoder = 0 if name == "prompt_tuning" else (16 * 128 + 128) + (128 * 128 + 128) + (128 * 16 + 16)
    assert rec["status"] == "done" and rec["cost"]["trainable_params"] == 5 * 16 + encoder + HEAD_BERT


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_prompt_methods_train_a_model_whose_config_names_its_sizes_otherwise(name, tiny_distilbert):
    """Was: PEFT's "Please specify `token_dim`" traceback; the sizes now come from the model (token = embedding)."""
    from efficientft.train import run

    rec = run(tiny_config(tiny_distilbert, method=name, method_args={"num_virtual_tokens": 5}, steps=2,
                          max_train=16, max_eval=8, max_length=32))
    head = (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * 2 + 2)  # DistilBERT's pre_classifier and classifier
    encoder = 0 if name == "prompt_tuning" else (HIDDEN * 128 + 128) + (128 * 128 + 128) + (128 * HIDDEN + HIDDEN)
    assert rec["status"] == "done" and rec["cost"]["trainable_params"] == 5 * HIDDEN + encoder + head


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning", "p_tuning"])
def test_prompt_methods_train_and_generate_on_a_causal_lm(name, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    method = METHODS.get(name).from_config({"num_virtual_tokens": 4})
    model = method.prepare(lm, [], Context(heads=[], peft_task_type="CAUSAL_LM"))
    ids = torch.randint(1, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(trainable(model).values(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 6 + 3)
    assert torch.equal(out[:, :6], ids)


# ------------------------------------------------------------------------------------------------- LoRA-FA
def test_lorafa_freezes_a_and_updates_b_along_the_projected_gradient(tiny_bert):
    method, model, targets = build(tiny_bert, "lorafa", rank=4)
    lay = layer(model, "layer.0.attention.self.value")
    a0 = lay.lora_A["default"].weight.detach().clone()
    assert not lay.lora_A["default"].weight.requires_grad
    assert sum(p.numel() for n, p in trainable(model).items() if "lora" in n) == len(targets) * 4 * HIDDEN  # B only
    with torch.no_grad():
        lay.lora_B["default"].weight.normal_(0, 0.1)  # so that B's gradient is not zero by symmetry
    groups = method.param_groups(model, __import__("efficientft.strategy").strategy.Strategy({}), 1e-3, 0.0)
    opt = method.optimizer(groups, 1e-3, 0.0)
    b0 = lay.lora_B["default"].weight.detach().clone()
    model(**batch(), labels=torch.tensor([0, 1])).loss.backward()
    g = lay.lora_B["default"].weight.grad.detach().clone()
    opt.step()
    assert torch.equal(lay.lora_A["default"].weight, a0)
    step = lay.lora_B["default"].weight.detach() - b0
    s = lay.scaling["default"]
    projected = g @ torch.linalg.pinv(a0 @ a0.T) / s**2
    big = projected.abs() > 1e-3 * projected.abs().max()
    # Adam's first step moves each entry by -lr·sign(gradient): the sign of the projected gradient, not of g
    assert (torch.sign(step[big]) == -torch.sign(projected[big])).float().mean() > 0.97
    assert (torch.sign(g[big]) != torch.sign(projected[big])).any()


# ------------------------------------------------------------------------------------------ refusals, one line
@pytest.mark.parametrize("name,args,message", [
    ("oft", {"block_size": 5}, "block_size 5 does not divide the input width of"),
    ("boft", {"block_size": 4, "n_butterfly_factor": 5}, "does not divide the input width"),
    ("c3a", {"block_size": 12}, "block_size 12 does not divide the input and output widths of"),
    ("fourierft", {"n_frequency": 5000}, "n_frequency 5000 exceeds the 32×32 = 1024 spectral entries"),
])
def test_sizes_that_do_not_fit_the_weights_are_refused_in_one_line(name, args, message, tiny_bert):
    with pytest.raises(ConfigError, match=message) as e:
        build(tiny_bert, name, **args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("args,msg", [
    (["--method", "prompt_tuning", "--lr-ratio", "4"],
     "lr_ratio 4 (W_v's rate) cannot apply to method 'prompt_tuning': it trains no parameter of W_v"),
    (["--method", "ln_tuning", "--lr-ratio", "2"], "cannot apply to method 'ln_tuning': it trains no parameter of W_v"),
    (["--method", "prefix_tuning", "--targets", "qkv"], "method 'prefix_tuning' adapts no modules"),
    (["--method", "prefix_tuning", "--gradient-checkpointing"],
     "method 'prefix_tuning' cannot train with gradient checkpointing (PEFT refuses it for this method)"),
    (["--method", "oft", "--method-arg", "block_size=5"], "method 'oft': block_size 5 does not divide the input width"),
    (["--method", "hra", "--rank", "3"], "rank must be even (HRA starts from pairs of equal reflections), got 3."),
    (["--method", "loftq", "--method-arg", "bits=3"], "bits must be 4 (NF4) or 8 (int8), got 3."),
    (["--method", "corda", "--method-arg", "mode=fast"], "mode must be one of ipm, kpm, got 'fast'."),
])
def test_bad_tuner_input_is_one_line_and_exit_code_2(args, msg, tiny_bert, tmp_path, capsys):
    from efficientft.cli import main

    code = main(["run", "--steps", "1", "--max-train", "8", "--model", str(tiny_bert), "--store",
                 str(tmp_path / "s.sqlite"), *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_nn_linear_only_tuners_refuse_gpt2_conv1d_in_one_line(tiny_gpt2):
    from transformers import AutoModelForSequenceClassification as Auto

    for name in ("loha", "oft", "hra", "c3a", "miss", "shira"):
        with pytest.raises(ConfigError, match=rf"^method '{name}': PEFT's layers for it take nn.Linear only, and "
                                              r"transformer.h.0.attn.c_proj is a GPT-2 Conv1D"):
            build(tiny_gpt2, name, targets="o", base=Auto.from_pretrained(tiny_gpt2, num_labels=2),
                  **METHODS.get(name).test_args())


# ------------------------------------------------------------------------------------------------- LoftQ
def test_loftq_starts_from_an_nf4_base_plus_a_low_rank_term_closer_to_w_than_nf4_alone(tiny_bert):
    from efficientft.methods.loftq import quantize_roundtrip

    base = load(tiny_bert)
    w = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    _, model, _ = build(tiny_bert, "loftq", base=base, rank=4, iters=3)
    lay = layer(model, "layer.0.attention.self.query")
    q = lay.get_base_layer().weight.detach()
    assert torch.equal(quantize_roundtrip(q, 4), q)  # the frozen base is an NF4 matrix
    start = q + lay.scaling["default"] * lay.lora_B["default"].weight @ lay.lora_A["default"].weight
    qlora = (w - quantize_roundtrip(w, 4)).norm()  # QLoRA's start: NF4(W), B = 0
    assert (w - start).norm() < 0.95 * qlora
    with torch.no_grad():  # the model computes Q + s·BA
        x = torch.randn(3, HIDDEN)
        torch.testing.assert_close(lay(x), x @ start.T + lay.get_base_layer().bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("iters", [1, 4])
def test_loftq_alternates_exactly_iters_times_and_each_alternation_lowers_the_error(tiny_bert, monkeypatch, iters):
    """Li et al. 2024 (arXiv 2310.08659), Algorithm 1: T alternations of Q_t = q_N(W − L_{t−1}), L_t = SVD_r(W − Q_t);
    counted at the quantizer, and ‖W − Q_t − L_t‖ (read from the next call's input W − L_t) falls each time."""
    import efficientft.methods.loftq as loftq

    real, calls = loftq.quantize_roundtrip, []

    def counted(w, bits):
        q = real(w, bits)
        calls.append((w.detach().clone(), q.detach().clone()))
        return q

    monkeypatch.setattr(loftq, "quantize_roundtrip", counted)
    base = load(tiny_bert)
    w = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    _, model, targets = build(tiny_bert, "loftq", base=base, rank=4, iters=iters)
    assert len(calls) == len(targets) * iters  # q and v of 2 layers, T quantizations each
    mine = calls[:iters]  # layer 0's query comes first
    assert torch.equal(mine[0][0], w)  # L_0 = 0: the first quantizes W itself
    errors = [(w - mine[0][1]).norm()]  # QLoRA's start: W − q_N(W)
    errors += [(x - q_prev).norm() for (x, _), (_, q_prev) in zip(mine[1:], mine[:-1], strict=True)]
    lay = layer(model, "layer.0.attention.self.query")
    q = lay.get_base_layer().weight.detach()
    lowrank = lay.scaling["default"] * lay.lora_B["default"].weight @ lay.lora_A["default"].weight
    errors.append((w - q - lowrank).norm())
    assert torch.equal(q, mine[-1][1])  # the base is the last alternation's Q
    assert all(later < earlier for earlier, later in zip(errors[:-1], errors[1:], strict=True)), errors


# ------------------------------------------------------------------------------------------------- CorDA
def layer_inputs(model_dir, module, data):
    """Each sequence's inputs to ``module`` in the original model (eval mode), one forward per sequence."""
    base = load(model_dir).eval()
    seen = []
    handle = base.get_submodule(module).register_forward_pre_hook(lambda m, a: seen.append(a[0][0].detach()))
    with torch.no_grad():
        for b in data:
            for row in range(b["input_ids"].shape[0]):
                base(input_ids=b["input_ids"][row:row + 1])
    handle.remove()
    return seen


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_adapter_is_the_svd_of_w_times_the_covariance_of_its_inputs(mode, tiny_bert):
    module = "bert.encoder.layer.0.attention.self.value"
    data = [{**batch(n=2, length=12, seed=s), "labels": torch.tensor([0, 1])} for s in range(2)]
    base = load(tiny_bert)
    w = base.get_submodule(module).weight.detach().clone()
    method, model, _ = build(tiny_bert, "corda", base=base, rank=4, mode=mode, init_batches=2)
    method.init_from_data(model, iter(data))
    lay = layer(model, "layer.0.attention.self.value")
    s = lay.scaling["default"]
    delta = s * lay.lora_B["default"].weight.detach() @ lay.lora_A["default"].weight.detach()
    torch.testing.assert_close(lay.get_base_layer().weight + delta, w, atol=1e-5, rtol=1e-5)  # W at init
    xs = [x / x.max().abs() for x in layer_inputs(tiny_bert, module, data)]  # PEFT scales each sequence by its max
    c = sum(x.T @ x for x in xs) / len(xs)
    c = c + torch.eye(HIDDEN) * c.diag().mean() * 0.01  # PEFT's damping
    u, sv, vh = torch.linalg.svd(w @ c)
    keep = slice(0, 4) if mode == "ipm" else slice(HIDDEN - 4, HIDDEN)
    want = u[:, keep] @ torch.diag(sv[keep]) @ vh[keep] @ torch.linalg.inv(c)
    torch.testing.assert_close(delta, want, atol=1e-4, rtol=1e-3)
    # a resumed run rebuilds the same initialisation from the method's state, without data
    again, fresh, _ = build(tiny_bert, "corda", rank=4, mode=mode)
    again.load_state_dict(fresh, method.state_dict(model))
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["prompt_tuning", "ln_tuning"])
def test_methods_that_target_nothing_get_no_targets_even_on_gpt2(name, tiny_gpt2):
    """The default --targets (qv) names GPT-2's fused c_attn slices, which a method that targets nothing must not
    be refused for, nor recorded as adapting."""
    p = prepare(tiny_config(tiny_gpt2, method=name, method_args={}, steps=1))
    assert p.info["targets"] == []
    assert p.method.trainable_parameters(p.model) > 0

