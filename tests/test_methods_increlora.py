"""IncreLoRA's defining property: the rank grows during training, where the importance is highest, to the budget;
what it adds joins the optimizer (λ for W_v's, a restarted warm-up) and a run resumed after a growth is exact."""

import pytest
import torch
import torch.nn as nn

import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.increlora import IncreLinear
from efficientft.store import Store
from efficientft.train import Schedule, prepare, run, schedule_fn, train
from tests.conftest import tiny_config
from tests.test_checkpoint import _config, _interrupted_then_resumed


def _spy_ranks(monkeypatch):
    """The total active rank after every step (the method's after_step is the loop's last hook of a step)."""
    seen: list[tuple[int, int]] = []
    cls = METHODS.get("increlora")
    real = cls.after_step

    def after_step(self, model, step):
        real(self, model, step)
        seen.append((step, sum(self.ranks(model).values())))

    monkeypatch.setattr(cls, "after_step", after_step)
    return seen


def test_defaults_grow_the_total_rank_from_init_r_to_the_budget(tiny_bert, monkeypatch):
    """Defaults on q, v of a 2-layer BERT (4 modules): rank 1 each, then 4 ranks (rank // 2) added to one module
    (1/12 of 4, rounded up) per round, 7 rounds, until 4 × 8 = 32; nothing grows after."""
    seen = _spy_ranks(monkeypatch)
    p = prepare(tiny_config(tiny_bert, method="increlora", method_args={}, steps=12))
    method = p.method
    assert method.ranks(p.model) and set(method.ranks(p.model).values()) == {1}
    for m in p.model.modules():  # advance learning: 4 reserves whose P, Q train and whose λ = 10⁻⁵ is frozen
        if isinstance(m, IncreLinear):
            assert len(m.E) == 5 and all(m.A[i].requires_grad and m.B[i].requires_grad for i in range(5))
            assert [(float(e.detach()), e.requires_grad) for e in m.E] == [(0.0, True)] + [(pytest.approx(1e-5), False)] * 4
    start_count = method.trainable_parameters(p.model)
    train(p, progress=False)
    totals = [t for _, t in seen]
    assert totals[0] in (4, 8) and totals[-1] == 32 == method.budget(p.model)
    steps = [b for a, b in zip(totals, totals[1:], strict=False) if b != a]
    assert [b - a for a, b in zip([4, *steps], steps, strict=False)] == [4] * 7  # one module × 4 ranks a round
    assert totals == sorted(totals) and method.done
    ranks = method.ranks(p.model)
    assert sum(ranks.values()) == 32 and len(set(ranks.values())) > 1  # not the same for every module
    # the reserves left the update (λ = 0) and no longer count; the grown components do
    for _, m in p.model.named_modules():
        if isinstance(m, IncreLinear):
            assert all(float(m.E[i]) == 0.0 for i in range(m.active, len(m.E)))
    assert method.trainable_parameters(p.model) > start_count


def test_the_modules_that_grow_are_those_of_highest_score(tiny_bert, monkeypatch):
    """Given sensitivities 1, 4, 2, 3 for the four modules, top_h 2 grows the 2nd and 4th every round: a version that
    grows uniformly ([2, 2, 2, 2]) or the first modules ([3, 3, 1, 1]) fails."""
    p = prepare(tiny_config(tiny_bert, method="increlora", steps=8,
                            method_args={"rank": 2, "top_h": 2, "incre_rank": 1, "init_warmup": 1,
                                         "incre_interval": 1}))
    sites = [m for m in p.model.modules() if isinstance(m, IncreLinear)]
    for m, v in zip(sites, (1.0, 4.0, 2.0, 3.0), strict=True):
        m.fake = v
    monkeypatch.setattr(IncreLinear, "sensitivity", lambda self, loss_scale=1.0: self.fake)
    train(p, progress=False)
    assert [m.active for m in sites] == [1, 3, 1, 3]
    scores = p.method.scores()
    assert set(sorted(scores, key=scores.get)[-2:]) == {n for n, m in p.model.named_modules() if m in sites[1::2]}


def test_the_score_is_the_sensitivity_of_the_update_summed_over_micro_batches():
    """s = Σ |ΔW ⊙ ∂L/∂ΔW| / √(out·in), ∂L/∂ΔW the step's whole gradient (two backward passes here): not the
    factors' gradients, not |ΔW| alone, not the last micro-batch's."""
    torch.manual_seed(0)
    m = IncreLinear(nn.Linear(6, 5), init_r=2, reserve=1, alpha=16.0, dropout=0.0)
    with torch.no_grad():
        for e in m.E:
            e.normal_()
    m.scoring = True
    xs = [torch.randn(3, 6), torch.randn(4, 6)]
    for x in xs:
        (m(x) ** 2).sum().backward()
    got = m.sensitivity()
    with torch.no_grad():
        a, b, e = torch.cat(list(m.A)), torch.cat(list(m.B), 1), torch.cat(list(m.E))
        delta = 16.0 / 2 * b @ (a * e)
        grad = sum(2 * (m.base(x) + x @ delta.t()).t() @ x for x in xs)  # ∂/∂ΔW of Σ‖W x + ΔW x‖²
        want = float((delta * grad).abs().sum() / (5 * 6) ** 0.5)
    assert got == pytest.approx(want, rel=1e-5) and got > 0
    assert m.sensitivity() == 0.0  # cleared for the next step


def test_a_step_whose_score_was_not_taken_does_not_leak_into_the_next():
    """An fp16 step the GradScaler skips calls no hook, so its (inf) ∂L/∂ΔW is not consumed; the optimizer clears
    the factors' gradients, and the next step's score is its own: finite, and that step's alone."""
    torch.manual_seed(0)
    m = IncreLinear(nn.Linear(6, 5), init_r=1, reserve=1, alpha=16.0, dropout=0.0)
    with torch.no_grad():
        m.E[0].fill_(1.0)
    m.scoring = True
    x = torch.randn(3, 6)
    (m(x).sum() * float("inf")).backward()  # the skipped step: no sensitivity() call
    for q in m.parameters():
        q.grad = None  # the step's zero_grad(set_to_none=True)
    (m(x) ** 2).sum().backward()
    got = m.sensitivity()
    for q in m.parameters():
        q.grad = None
    (m(x) ** 2).sum().backward()
    assert got == m.sensitivity() and 0 < got < float("inf")


def test_a_group_that_joins_late_warms_up_again_over_the_steps_left():
    """The reference's Multi_LambdaLR: a group added after step 4 of 10 (warm-up 2) gets warm-up then decay over the
    6 steps left, from its own step 0; the first group keeps LambdaLR's schedule."""
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1.0}], lr=1.0)
    sched = Schedule(opt, "linear", 2, 10)
    ref = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0),
                                            schedule_fn("linear", 2, 10))
    for _ in range(4):
        opt.step()
        sched.step()
        ref.optimizer.step()
        ref.step()
    opt.add_param_group({"params": [b], "lr": 0.5, "initial_lr": 0.5, "start": 4})
    late = schedule_fn("linear", 2, 6)
    for k in range(1, 6):
        opt.step()
        sched.step()
        ref.optimizer.step()
        ref.step()
        assert opt.param_groups[0]["lr"] == ref.optimizer.param_groups[0]["lr"]
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * late(k))
    assert opt.param_groups[1]["lr"] != pytest.approx(0.5 * schedule_fn("linear", 2, 10)(9))


def test_what_grows_joins_the_optimizer_with_lambda_for_w_v_and_trains(tiny_bert):
    p = prepare(tiny_config(tiny_bert, method="increlora", steps=10, lr_ratio=4.0,
                            method_args={"rank": 3, "top_h": 2, "init_warmup": 1, "incre_interval": 2}))
    train(p, progress=False)
    method, opt = p.method, p.optimizer
    assert [s for s, _ in method.joined] == [3, 5, 7, 9] and p.groups == opt.param_groups  # the run's groups: what is clipped
    held = {id(q) for g in opt.param_groups for q in g["params"]}
    assert all(id(q) in held for q in p.model.parameters() if q.requires_grad)
    named = dict(p.model.named_parameters())
    for step, names in method.joined:
        late = [g for g in opt.param_groups if g.get("start") == step]
        assert sorted(n for g in late for n in g["names"]) == sorted(names)
        for g in late:
            values = [".attention.self.value." in n for n in g["names"]]
            assert all(values) or not any(values)
            assert g["lr_scale"] == (4.0 if values[0] else 1.0)
        for n in names:
            if ".E." in n:  # a joined λ started at 10⁻⁵ and was trained
                assert float(named[n].detach()) != pytest.approx(1e-5, abs=1e-9)


def test_a_run_resumed_after_a_growth_equals_the_uninterrupted_run(tiny_bert, tmp_path, monkeypatch):
    """Growths at steps 3, 4 (before the checkpoint of step 4) and 5, 6 (after it): the resumed run's parameters,
    ranks and curves are the uninterrupted run's, bit for bit."""
    finals: list[dict] = []
    real = train_mod.measured

    def keep(p, *a, **k):
        finals.append({"params": {n: q.detach().clone() for n, q in p.model.named_parameters() if q.requires_grad},
                       "ranks": p.method.ranks(p.model), "joined": list(p.method.joined)})
        return real(p, *a, **k)

    monkeypatch.setattr(train_mod, "measured", keep)
    cfg = _config(tiny_bert, "increlora", method_args={"rank": 2, "top_h": 1, "init_warmup": 1,
                                                         "incre_interval": 1})
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["details"]["resumed_from_step"] == 4
    a, b = finals
    assert [s for s, _ in a["joined"]] == [3, 4, 5, 6] and a["joined"] == b["joined"] and a["ranks"] == b["ranks"]
    assert a["params"].keys() == b["params"].keys()
    assert all(torch.equal(a["params"][n], b["params"][n]) for n in a["params"])
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])
    assert resumed["cost"]["trainable_params"] == straight["cost"]["trainable_params"]


def test_a_run_too_short_for_the_budget_is_refused_before_training(tiny_bert, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "5", "--method", "increlora",
                 "--method-arg", "top_h=1", "--store", str(tmp_path / "s.sqlite")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "eft run: error: increlora: growing 4 modules from rank 1 to 8 takes 7 rounds of 4 ranks, one every 1 step "
        "after step 0, to step 8; the run has 5 steps. Train longer, or raise top_h or incre_rank, or lower "
        "init_warmup, incre_interval or rank.")


def test_bad_arguments_are_one_line():
    with pytest.raises(ConfigError, match=r"^method 'increlora': init_r \(9\) must be at most the target rank \(8\)"):
        METHODS.get("increlora").from_config({"init_r": 9})
    with pytest.raises(ConfigError, match=r"incre_interval must be a fraction of the run in \[0, 1\) or a whole"):
        METHODS.get("increlora").from_config({"incre_interval": 2.5})


def test_the_orthogonality_regulariser_is_the_references_over_every_component_and_2n_terms():
    """The reference trainer's ``compute_svd_orth_regu`` (FeiyuZhang98/IncreLoRA, NLU/src/transformers/trainer.py):
    per module ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F over *all* its components (reserves included), summed, divided by the
    number of terms 2n; the loss adds reg_orth_coef times it. Value and gradient by hand (d‖M‖_F = ⟨M, dM⟩/‖M‖_F)."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": IncreLinear(nn.Linear(6, 5), init_r=2, reserve=1, alpha=16.0, dropout=0.0),
                           "b": IncreLinear(nn.Linear(4, 7), init_r=1, reserve=2, alpha=16.0, dropout=0.0)})
    method = METHODS.get("increlora").from_config({"reg_orth_coef": 0.3})
    method.done = True  # the regulariser only: no score, no growth
    method.after_backward(model, 1)
    want_value, n_terms = 0.0, 0
    for m in model.values():
        q, p = torch.cat(list(m.A)).detach().double(), torch.cat(list(m.B), 1).detach().double()  # 3 rows / columns
        assert q.shape[0] == p.shape[1] == 3  # active and reserve components alike
        mq, mp = q @ q.T - torch.eye(3, dtype=q.dtype), p.T @ p - torch.eye(3, dtype=p.dtype)
        nq, np_ = float((mq**2).sum().sqrt()), float((mp**2).sum().sqrt())
        want_value += nq + np_
        n_terms += 2
        grad_q, grad_p = 2 * mq @ q / nq, 2 * p @ mp / np_  # of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F
        for i in range(3):
            torch.testing.assert_close(m.A[i].grad.double(), 0.3 / 4 * grad_q[i:i + 1])
            torch.testing.assert_close(m.B[i].grad.double(), 0.3 / 4 * grad_p[:, i:i + 1])
    assert n_terms == 4
    assert float(method.regulariser(model).detach()) == pytest.approx(want_value / n_terms, rel=1e-6)


def test_under_loss_scaling_the_scores_are_those_of_the_true_gradients(tiny_bert):
    """fp16's GradScaler multiplies the loss (so ∂L/∂ΔW, which the hook keeps) by its scale and unscales only the
    parameters' gradients: the score must not carry it. The same run with a scale that changes between steps (as
    it halves at an overflow and grows back) and without one: the same scores, step by step."""
    from efficientft.step import optimizer_step
    from efficientft.train import device_batches

    seen: list[list[dict]] = []
    for scales in (None, [2.0**16, 2.0**3, 2.0**10, 2.0**10]):
        p = prepare(tiny_config(tiny_bert, method="increlora", steps=8,
                                method_args={"rank": 2, "top_h": 1, "init_warmup": 1, "incre_interval": 1}))
        scaler = torch.amp.GradScaler("cpu", init_scale=scales[0]) if scales else None
        batches = device_batches(p)
        seen.append([])
        for step in range(1, 5):
            if scaler is not None and step > 1:
                scaler.update(new_scale=scales[step - 1])
            assert not optimizer_step(p, [next(batches)], step, scaler).skipped
            seen[-1].append({k: dict(getattr(p.method, k)) for k in ("ipt", "avg", "unc")})
    plain, scaled = seen
    assert plain[0]["ipt"] and all(v > 0 for v in plain[-1]["ipt"].values())
    for a, b in zip(plain, scaled, strict=True):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5), k


def test_retired_reserves_are_frozen_out_of_the_optimizer_and_uncounted(tiny_bert):
    """At the budget the reserves act nowhere (λ = 0): their P, Q stop training and leave the optimizer, so the
    trainable count and the FLOPs' trainable parameters agree (both leave them out)."""
    from efficientft.flops import flop_shape

    p = prepare(tiny_config(tiny_bert, method="increlora", steps=8,
                            method_args={"rank": 2, "top_h": 2, "init_warmup": 1, "incre_interval": 1}))
    train(p, progress=False)
    method, named = p.method, dict(p.model.named_parameters())
    assert method.done and len(method.retired) == 8  # 4 modules × one reserve's P and Q
    retired = [named[n] for n in method.retired]
    assert not any(q.requires_grad for q in retired)
    held = {id(q) for g in p.optimizer.param_groups for q in g["params"]}
    assert not any(id(q) in held or q in p.optimizer.state for q in retired)
    assert flop_shape(p.model).trainable == method.trainable_parameters(p.model)


def test_a_run_resumed_after_the_budget_is_reached_equals_the_uninterrupted_run(tiny_bert, tmp_path, monkeypatch):
    """The budget is reached at step 4, before the checkpoint of step 4: the retired reserves are frozen (not in
    the checkpoint's trainable weights) but the orthogonality term still reads them, so the method state keeps
    them; every adapter tensor, the curves and the cost figures of the resumed run are the uninterrupted run's."""
    finals: list[dict] = []
    real = train_mod.measured

    def keep(p, *a, **k):
        finals.append({n: q.detach().clone() for n, q in p.model.named_parameters()
                       if q.requires_grad or n in p.method.retired})
        return real(p, *a, **k)

    monkeypatch.setattr(train_mod, "measured", keep)
    cfg = _config(tiny_bert, "increlora", method_args={"rank": 2, "top_h": 2, "init_warmup": 1,
                                                         "incre_interval": 1})
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["details"]["resumed_from_step"] == 4
    a, b = finals
    assert a.keys() == b.keys() and sum(".A." in n for n in a) == 4 * 3  # 2 active and 1 retired P, 4 modules
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])
    for figure in ("trainable_params", "total_params", "model_flops"):
        assert resumed["cost"][figure] == straight["cost"][figure], figure
