"""PaCA, LoLDU, SVFit and SoRA: each method's defining property on tiny float64 models built from configs."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods._decomp import DiagAdapter
from efficientft.methods.base import Context
from efficientft.methods.capabilities import check_quantized
from efficientft.methods.loldu import ldu_factors
from efficientft.methods.paca import PartialColumns
from efficientft.methods.sora import GatedLoRA, SparseAdamW, soft_threshold
from efficientft.models import head_modules, resolve_targets
from efficientft.strategy import Strategy

H = 16  # hidden size: W_q, W_v are 16 × 16


def tiny(name, args=None, seed=0):
    """(method, prepared float64 tiny BERT, the base model before preparation, a fixed batch)."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg).double().eval()
    base = BertForSequenceClassification(cfg).double().eval()
    base.load_state_dict(model.state_dict())
    method = get_method(name).from_config(args or {})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model), seed=seed))
    batch = {"input_ids": torch.randint(0, 64, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1, 0])}
    return method, model, base, batch


def fit(method, model, batch, steps=3, lr=1e-2, weight_decay=0.1):
    groups = method.param_groups(model, Strategy({"v": 4.0}), lr, weight_decay)
    opt = method.optimizer(groups, lr, weight_decay)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def targeted(name):
    return ("attention.self.query.weight" in name or "attention.self.value.weight" in name)


def check_merge_exact(method, model, batch):
    with torch.no_grad():
        want = model(**batch).logits
        merged = method.merge(model)
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-10, atol=1e-12)
    assert not [m for m in merged.modules() if isinstance(m, (PartialColumns, DiagAdapter, GatedLoRA))]
    return merged


# --------------------------------------------------------------------------------------------------------------- PaCA
def test_paca_trains_only_its_columns_and_merges_exactly():
    method, model, base, batch = tiny("paca", {"rank": 3})
    modules = {n: m for n, m in model.named_modules() if isinstance(m, PartialColumns)}
    assert len(modules) == 4 and all(list(dict(m.named_children())) == ["base"] for m in modules.values())
    assert method.trainable_parameters(model) == 4 * 3 * H + H * 2 + 2  # r × out per module; the classifier
    index = {n.removesuffix(".base"): m.index.clone() for n, m in modules.items()}
    with torch.no_grad():  # no extra function at the start: the pretrained model
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=0, atol=0)
    merged = check_merge_exact(method, fit(method, model, batch), batch)
    before, after = weights(base), weights(merged)
    for n, w in before.items():
        if targeted(n):
            cols = index[n.removesuffix(".weight")]
            changed = (after[n] != w).any(0).nonzero().flatten()
            assert changed.tolist() == cols.tolist(), n  # exactly the chosen columns, all of them
        elif not n.startswith("classifier"):
            assert torch.equal(after[n], w), n


def test_paca_gradient_is_the_columns_of_the_full_gradient():
    method, model, base, batch = tiny("paca", {"rank": 5})
    name = "bert.encoder.layer.0.attention.self.value"
    m = model.get_submodule(name)
    model(**batch).loss.backward()
    full = base.get_submodule(name).weight
    full.requires_grad_(True)
    (g,) = torch.autograd.grad(base(**batch).loss, [full])
    torch.testing.assert_close(m.cols.grad, g[:, m.index], rtol=1e-10, atol=1e-12)


def test_paca_rank_limit():
    with pytest.raises(ConfigError, match=r"rank 17 is larger than bert.encoder.layer.0.attention.self.query "
                                          r"allows \(\(16, 16\): at most 16\)"):
        tiny("paca", {"rank": 17})


# -------------------------------------------------------------------------------------------------------------- LoLDU
def test_ldu_factors_rebuild_the_weight():
    torch.manual_seed(1)
    for shape in ((6, 9), (9, 6)):
        w = torch.randn(*shape, dtype=torch.float64)
        k = min(shape)
        left, d, right = ldu_factors(w, k)
        torch.testing.assert_close((left * d) @ right, w)  # P L D U = W at full rank
        assert torch.allclose(torch.diagonal(right[:, :k]), torch.ones(k, dtype=w.dtype))  # U unit upper


def test_loldu_starts_at_the_base_trains_only_the_diagonal_and_merges_exactly():
    method, model, base, batch = tiny("loldu", {"rank": 4})
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=1e-10, atol=1e-12)
    trainable = sorted(n.rsplit(".", 1)[1] for n, p in model.named_parameters()
                       if p.requires_grad and not n.startswith("classifier"))
    assert trainable == ["diag"] * 4 + ["scale"] * 4
    assert method.trainable_parameters(model) == 4 * (4 + 1) + H * 2 + 2
    frozen = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("left", "right", "diag0"))}
    fit(method, model, batch)
    assert all(torch.equal(b, frozen[n]) for n, b in model.named_buffers() if n in frozen)
    check_merge_exact(method, model, batch)


# -------------------------------------------------------------------------------------------------------------- SVFit
def test_svfit_update_lies_in_the_top_r_singular_subspace():
    r = 3
    method, model, base, batch = tiny("svfit", {"rank": r})
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=1e-10, atol=1e-12)
    assert method.trainable_parameters(model) == 4 * r + H * 2 + 2
    merged = check_merge_exact(method, fit(method, model, batch), batch)
    before, after = weights(base), weights(merged)
    for n, w in before.items():
        if targeted(n):
            u, s, vh = torch.linalg.svd(w)
            delta = after[n] - w
            assert delta.abs().max() > 1e-6, n
            proj = u[:, :r] @ (u[:, :r].t() @ delta @ vh[:r].t()) @ vh[:r]
            torch.testing.assert_close(proj, delta, rtol=0, atol=1e-12)
            # diagonal in that basis: only the top-r singular values changed
            core = u[:, :r].t() @ delta @ vh[:r].t()
            torch.testing.assert_close(core, torch.diag(torch.diagonal(core)), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------- SoRA
def test_soft_threshold():
    g = torch.tensor([-2.0, -0.3, 0.0, 0.1, 0.5, 3.0])
    assert soft_threshold(g, 0.4).tolist() == pytest.approx([-1.6, 0.0, 0.0, 0.0, 0.1, 2.6])


def test_sora_gate_step_is_adamw_then_a_constant_threshold_on_the_gates_only():
    lr, xi = 1e-2, 0.5
    torch.manual_seed(0)
    g0, grad = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    w0 = torch.full((6,), 1e-3, dtype=torch.float64)  # a factor's entries, all within ξ of zero
    gate, ref = torch.nn.Parameter(g0.clone()), torch.nn.Parameter(g0.clone())
    w, w_ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = SparseAdamW([{"params": [gate], "gate": True, "weight_decay": 0.0, "lr": lr * 4},
                       {"params": [w], "weight_decay": 0.1}], lr, 0.1, xi)
    plain = torch.optim.AdamW([{"params": [ref], "weight_decay": 0.0, "lr": lr * 4},
                               {"params": [w_ref], "weight_decay": 0.1}], lr=lr)
    for _ in range(2):
        gate.grad, ref.grad, w.grad, w_ref.grad = grad.clone(), grad.clone(), -grad.clone(), -grad.clone()
        opt.step()
        plain.step()
        with torch.no_grad():
            ref.copy_(soft_threshold(ref, xi))  # ξ itself, whatever the group's rate
    torch.testing.assert_close(gate.detach(), ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(w.detach(), w_ref.detach(), rtol=0, atol=0)  # not thresholded
    assert bool((w != 0).all())


def test_sora_gates_start_random_and_the_l1_term_reaches_only_the_gates():
    method, model, _, batch = tiny("sora", {"rank": 4, "sparse_lambda": 2.0})
    gates = {n: p for n, p in model.named_parameters() if n.endswith(".gate")}
    every = torch.cat([p.detach() for p in gates.values()])
    assert len(gates) == 4 and every.unique().numel() == every.numel()  # drawn, not ones
    model(**batch).loss.backward()
    task = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    method.after_backward(model, 1)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        extra = 2.0 * torch.sign(p.detach()) / every.numel() if n in gates else torch.zeros_like(p)
        torch.testing.assert_close(p.grad, task[n] + extra, rtol=1e-12, atol=1e-15)


def test_sora_defaults_prune_on_a_short_run():
    method, model, _, batch = tiny("sora")  # rank 8, sparse_lambda 10, ξ 3e-4
    assert method.effective_ranks(model) == {n: 8 for n in method.effective_ranks(model)}
    lr = 5e-4  # the default run's rate
    groups = method.param_groups(model, Strategy({}), lr, 0.01)
    opt = method.optimizer(groups, lr, 0.01)
    model.train()
    for step in range(300):  # each gate moves toward 0 by about lr + ξ = 8e-4 a step (the L1 term leads early)
        model(**batch).loss.backward()
        method.after_backward(model, step)
        opt.step()
        opt.zero_grad()
    ranks = method.effective_ranks(model)
    assert sum(ranks.values()) <= 4 * 8 - 6, ranks  # 24 of 32 on this seed: the gates within ~0.24 of zero
    check_merge_exact(method, model.eval(), batch)


def test_sora_large_threshold_prunes_every_rank_and_gates_have_no_decay():
    method, model, _, batch = tiny("sora", {"rank": 4, "xi": 1e3})
    groups = method.param_groups(model, Strategy({"v": 4.0}), 1e-2, 0.1)
    gates = [g for g in groups if g.get("gate")]
    assert sorted(n for g in gates for n in g["names"]) == sorted(
        n for n, _ in model.named_parameters() if n.endswith(".gate"))
    assert all(g["weight_decay"] == 0.0 for g in gates) and {g["lr_scale"] for g in gates} == {1.0, 4.0}
    assert method.effective_ranks(model) == {n: 4 for n in method.effective_ranks(model)}
    fit(method, model, batch, steps=1)
    assert set(method.effective_ranks(model).values()) == {0}
    check_merge_exact(method, model, batch)


def test_sora_no_threshold_keeps_rank():
    method, model, _, batch = tiny("sora", {"rank": 4, "xi": 0.0, "sparse_lambda": 0.0})
    fit(method, model, batch, steps=2)
    assert set(method.effective_ranks(model).values()) == {4}


# ---------------------------------------------------------------------------------------------------- all four methods
@pytest.mark.parametrize("name", ["paca", "loldu", "svfit", "sora", "kasa", "mezo", "sparse_mezo"])
def test_refuses_a_quantized_base_with_its_reason(name):
    method = get_method(name)()
    assert method.capabilities.quantized_base is False
    with pytest.raises(ConfigError) as e:
        check_quantized(method, "4bit")
    assert str(e.value).startswith(f"method '{name}' cannot train on a 4bit quantized base: "
                                   f"{method.capabilities.quantized_base_reason}. Methods that can: ")


@pytest.mark.parametrize("name", ["paca", "loldu", "svfit", "sora", "kasa"])
def test_trains_and_generates_on_a_tiny_llama(name):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=H, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    method = get_method(name).from_config({"rank": 2})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=[], peft_task_type="CAUSAL_LM"))
    ids = torch.randint(0, 64, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    losses = []
    groups = method.param_groups(model, Strategy({"v": 4.0}), 5e-2, 0.0)
    opt = method.optimizer(groups, 5e-2, 0.0)
    for _ in range(3):
        loss = model(**batch).loss
        losses.append(float(loss))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0]
    out = model.generate(ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 7)


# --------------------------------------------------------------------------------------------------------------- KaSA
def test_kasa_truncates_the_smallest_singular_components():
    r = 3
    method, model, base, batch = tiny("kasa", {"rank": r})
    for n, w in weights(base).items():
        if targeted(n):
            s0 = torch.linalg.svdvals(w)
            s1 = torch.linalg.svdvals(model.get_submodule(n.removesuffix(".weight")).base.weight)
            torch.testing.assert_close(s1[: H - r], s0[: H - r], rtol=1e-10, atol=1e-12)  # the top k − r stay
            assert s1[H - r:].abs().max() < 1e-10  # the r smallest are gone
    assert method.trainable_parameters(model) == 4 * (r * (H + H) + r) + H * 2 + 2
    assert all(torch.equal(m.U, torch.zeros_like(m.U)) for m in model.modules() if hasattr(m, "sigma"))


def test_kasa_regulariser_gradient_is_that_of_the_full_loss():
    method, model, _, batch = tiny("kasa", {"rank": 3, "beta": 0.3, "gamma": 0.2})
    fit(method, model, batch, steps=1)  # ΔU ≠ 0: every term of the regulariser has a gradient
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(model(**batch).loss + method.regulariser(model), params)
    model(**batch).loss.backward()
    method.after_backward(model, 1)
    for p, g in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    reg = [m.regulariser(0.3, 0.2) for m in model.modules() if hasattr(m, "sigma")][0]
    m = [m for m in model.modules() if hasattr(m, "sigma")][0]
    eye = torch.eye(3, dtype=torch.float64)
    by_hand = 0.3 * float((m.sigma ** 2).sum()) + 0.2 * (float(torch.linalg.norm(m.U.t() @ m.U - eye))
                                                          + float(torch.linalg.norm(m.V @ m.V.t() - eye)))
    assert float(reg) == pytest.approx(by_hand)
    check_merge_exact(method, model, batch)


def test_kasa_regulariser_is_the_mean_over_modules_and_singular_values_are_drawn():
    method, model, _, batch = tiny("kasa", {"rank": 3, "beta": 0.3, "gamma": 0.2})
    sigmas = torch.cat([m.sigma.detach() for m in model.modules() if hasattr(m, "sigma")])
    assert sigmas.numel() == 4 * 3 and sigmas.unique().numel() == sigmas.numel()  # drawn, not ones
    fit(method, model, batch, steps=1)
    terms = [float(m.regulariser(0.3, 0.2)) for m in model.modules() if hasattr(m, "sigma")]
    assert len(terms) == 4 and float(method.regulariser(model)) == pytest.approx(sum(terms) / 4)


def test_kasa_keeps_one_component():
    with pytest.raises(ConfigError, match=r"rank 16 is larger than .* allows \(\(16, 16\): at most 15\)"):
        tiny("kasa", {"rank": 16})
