"""MeZO and Sparse MeZO: the SPSA estimate is the directional derivative, the step is exactly −lr·g·z, nothing is
backpropagated, the loss falls, the sparse mask holds, and bad settings are refused before training."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.methods.mezo import directions, projected_gradient, step_seed
from efficientft.models import head_modules, resolve_targets
from efficientft.resolve import resolve
from efficientft.strategy import Strategy
from efficientft.train import prepare, train
from tests.conftest import tiny_config

LAMBDA = 4.0


def tiny64(name, args=None):
    """A float64 tiny BERT (no dropout), prepared by the method on Q, V and the head; a fixed batch and its loss."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg).double().eval()
    method = get_method(name).from_config(args or {})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model), seed=3))
    batch = {"input_ids": torch.randint(0, 64, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1, 0])}
    groups = method.param_groups(model, Strategy({"v": LAMBDA}), 1e-2, 0.0)
    opt = method.optimizer(groups, 1e-2, 0.0)
    return method, model, opt, lambda: float(model(**batch).loss.detach()), batch


def params_of(opt):
    return [q for g in opt.param_groups for q in g["params"]]


def test_projected_gradient_is_the_directional_derivative():
    method, model, opt, loss_fn, batch = tiny64("mezo")
    params = params_of(opt)
    g, _, sq = projected_gradient(params, loss_fn, 1e-6, seed=11)
    grads = torch.autograd.grad(model(**batch).loss, params)
    z = list(directions(params, 11))
    want = sum(float((gr * zi).sum()) for gr, zi in zip(grads, z, strict=True))
    assert g == pytest.approx(want, rel=1e-6)
    assert sq == pytest.approx(sum(float(zi.pow(2).sum()) for zi in z))


def test_a_step_moves_each_parameter_by_minus_lr_g_z_and_lambda_scales_w_v():
    method, model, opt, loss_fn, _ = tiny64("mezo", {"eps": 1e-4})
    params = params_of(opt)
    before = [q.detach().clone() for q in params]
    seed = step_seed(3, 7)
    g, _, _ = projected_gradient(params, loss_fn, 1e-4, seed)
    loss, norm = method.update(model, opt, loss_fn, 7, max_grad_norm=None)
    z, old = iter(directions(params, seed)), iter(before)
    lrs = set()
    for group in opt.param_groups:
        for q, name in zip(group["params"], group["names"], strict=True):
            want = -group["lr"] * g * next(z)
            torch.testing.assert_close(q.detach() - next(old), want, rtol=1e-7, atol=1e-12)
            assert group["lr"] == pytest.approx(1e-2 * (LAMBDA if name.endswith("value.weight") else 1.0))
            lrs.add(group["lr"])
    assert sorted(lrs) == pytest.approx([1e-2, 4e-2])
    assert norm > 0 and loss == pytest.approx(float(loss_fn()), rel=1e-2)


def test_clipping_bounds_the_estimated_gradient_norm():
    method, model, opt, loss_fn, _ = tiny64("mezo")
    params = params_of(opt)
    before = [q.detach().clone() for q in params]
    g, _, sq = projected_gradient(params, loss_fn, 1e-3, step_seed(3, 1))
    _, norm = method.update(model, opt, loss_fn, 1, max_grad_norm=1e-3)
    assert norm == pytest.approx(abs(g) * sq ** 0.5)
    old = iter(before)
    moved = sum(float(((q.detach() - next(old)) / grp["lr"]).pow(2).sum()) for grp in opt.param_groups
                for q in grp["params"])
    assert moved ** 0.5 == pytest.approx(1e-3, rel=1e-4)  # the clipped g·z has norm max_grad_norm


def test_no_gradient_and_no_optimizer_state(tiny_bert_no_dropout):
    p = prepare(tiny_config(tiny_bert_no_dropout, method="mezo", targets="qv", method_args={}, steps=3,
                            max_train=8, max_eval=8, lr=1e-3, lr_ratio=LAMBDA))
    train(p, progress=False)
    assert all(q.grad is None for q in p.model.parameters())
    assert not p.optimizer.state and p.method.optimizer_state(p.optimizer) == []
    with pytest.raises(RuntimeError, match="updates through Method.update"):
        p.optimizer.step()


def test_loss_falls_over_fifty_steps(tiny_bert_no_dropout):
    p = prepare(tiny_config(tiny_bert_no_dropout, method="mezo", targets="qv", method_args={"eps": 1e-3},
                            steps=50, batch_size=8, max_train=8, max_eval=8, lr=2e-2, max_grad_norm=None,
                            warmup_ratio=0.0, schedule="constant"))
    out = train(p, progress=False)
    loss = [v for _, _, n, v in out["curve"] if n == "loss"]
    assert len(loss) == 50
    assert sum(loss[-5:]) / 5 < sum(loss[:5]) / 5 - 0.01, loss  # 0.695 -> 0.673 on this seed


def test_sparse_mezo_leaves_the_large_entries_unchanged():
    method, model, opt, loss_fn, _ = tiny64("sparse_mezo", {"sparsity": 0.75})
    params = params_of(opt)
    masks = method.masks(params)
    before = [q.detach().clone() for q in params]
    method.update(model, opt, loss_fn, 1)
    for q, b, m in zip(params, before, masks, strict=True):
        if q.dim() == 2:  # (random biases start at 0: every entry ties at the threshold and is perturbed)
            assert m.float().mean() == pytest.approx(0.25, abs=1.0 / m.numel())  # ⌈25 %⌉ of each weight
        assert torch.equal(q.detach()[~m], b[~m])  # bit-identical outside the mask
        assert (q.detach()[m] != b[m]).float().mean() > 0.9
    after = method.masks(params)  # recomputed at the new weights: the same count per weight
    assert [int(m.sum()) for m in after if m.dim() == 2] == [int(m.sum()) for m in masks if m.dim() == 2]
    assert method.perturbed_per_step(model) == sum(int(m.sum()) for m in after)
    assert method.trainable_parameters(model) == sum(q.numel() for q in params)  # any entry may move in a run


def test_args_and_refusals(tiny_bert):
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        get_method("sparse_mezo").from_config({"sparsity": 1})
    with pytest.raises(ConfigError, match="eps must be a positive number, got 0.0"):
        get_method("mezo").from_config({"eps": 0})
    with pytest.raises(ConfigError, match="--gradient-checkpointing saves activations for the backward pass; "
                                          "method 'mezo' has none"):
        prepare(tiny_config(tiny_bert, method="mezo", method_args={}, gradient_checkpointing=True))


@pytest.mark.parametrize("name", ["mezo", "sparse_mezo"])
def test_trains_and_generates_on_a_tiny_llama(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    method = get_method(name)()
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=[], peft_task_type="CAUSAL_LM"))
    ids = torch.randint(0, 64, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    opt = method.optimizer(method.param_groups(model, Strategy({"v": LAMBDA}), 1e-2, 0.0), 1e-2, 0.0)
    before = [q.detach().clone() for q in params_of(opt)]
    loss, _ = method.update(model, opt, lambda: float(model(**batch).loss), 1)
    assert loss == loss and any(not torch.equal(q, b) for q, b in zip(params_of(opt), before, strict=True))
    out = model.generate(ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 7)


def test_accumulated_micro_batches_weigh_by_examples(tiny_bert_no_dropout):
    """The loss an owned update sees over micro-batches of 3 and 5 examples is the mean over all 8 (as gradients)."""
    from efficientft.step import optimizer_step

    p = prepare(tiny_config(tiny_bert_no_dropout, method="mezo", targets="qv", method_args={}, steps=1,
                            batch_size=8, max_train=8, max_eval=8))
    batch = next(iter(p.batches().indexed(0)))[1]
    parts = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    seen = []
    p.method.update = lambda model, opt, loss_fn, step, clip: (seen.append(loss_fn()), (seen[-1], None))[1]
    p.model.eval()
    with torch.no_grad():
        whole = float(p.model(**batch).loss)
    result = optimizer_step(p, [(None, b) for b in parts], 1, scaler=torch.amp.GradScaler("cpu"))
    assert seen[0] == pytest.approx(whole, rel=1e-6) and result.loss == seen[0] and not result.skipped


def test_the_default_run_takes_the_unclipped_step(tiny_bert_no_dropout):
    """Under the default max_grad_norm (1.0) a MeZO step is still θ ← θ − lr · g · z, with ‖g·z‖ above 2."""
    from efficientft.step import optimizer_step

    cfg = tiny_config(tiny_bert_no_dropout, method="mezo", targets="qv", method_args={}, steps=1, batch_size=8,
                      max_train=8, max_eval=8, lr=1e-3, warmup_ratio=0.0, schedule="constant")
    assert cfg.max_grad_norm == 1.0 and resolve(cfg).max_grad_norm is None  # the record says what ran
    p = prepare(cfg)
    params = params_of(p.optimizer)
    before = [q.detach().clone() for q in params]
    seen, update = {}, p.method.update

    def spy(model, opt, loss_fn, step, clip):
        seen["clip"], seen["seed"] = clip, step_seed(p.method.ctx.seed, step)
        model.eval()
        seen["g"], _, seen["sq"] = projected_gradient(params, loss_fn, 1e-3, seen["seed"])  # θ is restored
        return update(model, opt, loss_fn, step, clip)

    p.method.update = spy
    batch = next(iter(p.batches().indexed(0)))[1]
    optimizer_step(p, [(None, batch)], 1)
    g = seen["g"]
    assert seen["clip"] is None and abs(g) * seen["sq"] ** 0.5 > 2.0  # clipping at 1.0 would have halved it
    z, old = iter(directions(params, seen["seed"])), iter(before)
    for group in p.optimizer.param_groups:
        for q in group["params"]:
            torch.testing.assert_close(q.detach() - next(old), -group["lr"] * g * next(z), rtol=1e-3, atol=1e-7)  # fp32


@pytest.mark.parametrize("name", ["mezo", "sparse_mezo"])
def test_a_clipping_norm_is_refused_in_one_line(name, tiny_bert):
    from efficientft.config import RunConfig

    with pytest.raises(ConfigError) as e:
        resolve(RunConfig(method=name, max_grad_norm=0.5))
    assert str(e.value) == (f"method {name!r} owns its update and does not clip it (its paper's algorithm steps "
                            "unclipped), so max_grad_norm 0.5 would not apply; drop --max-grad-norm (or give 0).")
    assert resolve(RunConfig(method=name, max_grad_norm=None)).max_grad_norm is None
    assert resolve(RunConfig(method="lora", max_grad_norm=0.5)).max_grad_norm == 0.5  # others clip as asked
