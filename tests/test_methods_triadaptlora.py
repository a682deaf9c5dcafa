"""TriAdaptLoRA's defining properties, under the defaults a user gets (rank 8 = the target average, first blocks of
rank 1, growth by rank // 2 = 4, the linear threshold schedule, s = 2): the triangular split of C (old blocks never
resized, the new border a row band of L and a column band of U), growth of the weights whose normalised norm
‖C‖_F / n_b rose most (not all of them, not the largest norms), new blocks in the optimizer at their weight's rate
(λ for W_v's), and exact resume across growth steps."""

import math

import pytest
import torch

from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.triadaptlora import TriAdaptProjection, TriFactors, sites
from efficientft.store import Store
from efficientft.train import prepare, run, train
from tests.conftest import tiny_config
from tests.test_checkpoint import _interrupted_then_resumed

NAME = "triadaptlora"


def _prepared(model, steps=28, **kw):
    return prepare(tiny_config(model, method=NAME, method_args=kw.pop("method_args", {}), targets="qv", steps=steps,
                               **kw))


def _explicit_core(f: TriFactors) -> torch.Tensor:
    """C placed block by block: L_i on rows [R_{i-1}, R_i) and columns [0, R_i), U_i on columns [R_{i-1}, R_i) and
    rows [0, R_i) (written independently of the module's own assembly)."""
    r = f.rank
    c = torch.zeros(r, r, dtype=torch.float64)
    at = 0
    for lower, upper in zip(f.L, f.U, strict=True):
        k = lower.shape[0]
        c[at:at + k, :at + k] += lower.detach().double()
        c[:at + k, at:at + k] += upper.detach().double()
        at += k
    return c


def test_defaults_are_the_reference_codes():
    m = METHODS.get(NAME).from_config({})
    a = m.args
    assert (a.rank, a.init_rank, a.step_rank(), a.init_warmup, a.incre_interval, a.growth, a.scale,
            a.orth_reg_weight) == (8, 1, 4, 0, 1, "linear", 2.0, 0.5)
    assert "2501.08008" in __import__("efficientft.methods.triadaptlora", fromlist=["x"]).__doc__


def test_the_split_is_triangular_and_growth_only_adds_a_border():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12)
    proj = TriAdaptProjection(base, {"all": (0, 12)}, scale=2.0, init_rank=1, like=base.weight)
    f = proj.tri["all"]
    # the first block: A drawn, B zero, C = L + U = 2·I (eye on both halves): the model starts at the base model
    assert torch.equal(f.core(), torch.full((1, 1), 2.0)) and not f.B[0].any() and f.A[0].std() < 0.1
    x = torch.randn(5, 16)
    assert torch.equal(proj(x), base(x))
    kept = [f.A[0], f.L[0], f.U[0]]
    f.grow(2, base.weight)
    f.grow(3, base.weight)
    assert f.blocks() == [1, 2, 3] and f.rank == 6
    # old blocks are the same tensors (never resized or copied); each new block is a border of C, not a dense C
    assert all(p is q for p, q in zip(kept, [f.A[0], f.L[0], f.U[0]], strict=True))
    assert [tuple(p.shape) for p in f.L] == [(1, 1), (2, 3), (3, 6)]
    assert [tuple(p.shape) for p in f.U] == [(1, 1), (3, 2), (6, 3)]
    assert sum(p.numel() for p in [*f.L, *f.U]) == 2 * (1 * 1 + 2 * 3 + 3 * 6) < 2 * 6 * 6
    with torch.no_grad():
        for p in f.parameters():
            p.normal_()
    c = f.core().double()
    torch.testing.assert_close(c, _explicit_core(f))
    # the lower part's band of block i ends at R_i, the upper part's starts below R_i: block-triangular
    lower = torch.cat([torch.nn.functional.pad(p, (0, 6 - p.shape[1])) for p in f.L]).detach()
    ends = [1, 3, 3, 6, 6, 6]
    assert all(not lower[i, ends[i]:].any() for i in range(6))
    # the forward is base + s · B C A, the merge the same weight
    a, b = torch.cat(list(f.A)).double(), torch.cat(list(f.B), 1).double()
    want = base(x).double() + 2.0 * x.double() @ (b @ c @ a).T
    torch.testing.assert_close(proj(x).double(), want, rtol=1e-5, atol=1e-5)
    merged = proj.merged()
    torch.testing.assert_close(merged(x).double(), want, rtol=1e-5, atol=1e-5)


def _set_core(f: TriFactors, values):
    """Make C = diag(values) on a weight of one block (L carries it, U is zero)."""
    with torch.no_grad():
        f.L[0].copy_(torch.tensor([[values]]))
        f.U[0].zero_()


def test_the_weights_whose_normalised_norm_rose_most_grow_by_the_linear_schedule(tiny_bert):
    p = _prepared(tiny_bert)  # defaults: 4 weights (Q, V of 2 layers) at rank 1, budget 4 · 8 = 32, T = 28
    m = p.method
    found = [f for _, f in sites(p.model)]
    assert [f.blocks() for f in found] == [[1]] * 4 and all(f.previous == 2.0 for f in found)
    for f, c in zip(found, [3.0, 7.0, 5.0, 2.5], strict=True):
        _set_core(f, c)  # scores (‖C‖_F / 1 − 2): 1, 5, 3, 0.5
    # step 1: ⌊(32 − 4) · 1/28⌋ = 1 weight grows, the one whose norm rose most, by rank // 2 = 4
    m.after_step(p.model, 1)
    assert [f.rank for f in found] == [1, 5, 1, 1]
    # step 2: ⌊(32 − 8) · 2/28⌋ = 1. Weight 1's C grew a border (eye blocks) and a larger C[0, 0]: its norm per block
    # fell (√(81 + 8)/2 − 7 < 0) while its plain norm rose (√89 − 7 = 2.4); weight 3 rose by 1.5; 0 and 2 did not move
    with torch.no_grad():
        found[1].L[0].fill_(9.0)
    _set_core(found[3], 4.0)
    m.after_step(p.model, 2)
    assert [f.rank for f in found] == [1, 5, 1, 5]
    assert [f.blocks() for f in found] == [[1], [1, 4], [1], [1, 4]]
    # step 14: ⌊(32 − 12) · 14/28⌋ = 10, more than the 4 weights: the threshold is the lowest score, all grow
    m.after_step(p.model, 14)
    assert [f.rank for f in found] == [5, 9, 5, 9]


def test_the_count_follows_the_linear_and_the_exponential_schedules(tiny_bert):
    p = _prepared(tiny_bert, steps=100, method_args={"init_warmup": 20})
    m = p.method
    # c = (t − 20) / 80, 28 ranks to go: ⌊28 c⌋, at least one
    assert [m.growth_count(t, 4, 32, 99) for t in (21, 40, 60, 100)] == [1, 7, 14, 28]
    m.args.growth = "exponential"  # ⌊exp(c · ln 28)⌋ in floating point, as the reference computes it (27 at c = 1)
    assert [m.growth_count(t, 4, 32, 99) for t in (21, 60, 100)] == [1, 5, int(math.exp(math.log(28)))]
    assert m.growth_count(100, 4, 32, 3) == 3  # never more than the weights there are


def test_new_blocks_train_at_their_weights_rate_and_the_run_counts_them(tiny_bert, tmp_path):
    p = _prepared(tiny_bert, steps=6, lr_ratio=4.0)
    start = p.method.trainable_parameters(p.model)
    train(p, progress=False)
    ranks = p.method.ranks(p.model)
    assert sum(map(sum, ranks.values())) >= 32 and all(len(b) > 1 for b in ranks.values())  # grew to the budget
    params = dict(p.model.named_parameters())
    held = {n: g["lr_scale"] for g in p.optimizer.param_groups for n in g["names"]}
    assert {n for n, q in params.items() if q.requires_grad} == set(held)  # every new block is in the optimizer
    assert {id(q) for g in p.optimizer.param_groups for q in g["params"]} == {
        id(q) for q in params.values() if q.requires_grad}
    grown = [n for n in held if n.rpartition(".")[2] != "0" and ".tri." in n]
    assert grown and all(held[n] == (4.0 if "attention.self.value" in n else 1.0) for n in grown)
    assert all(p.optimizer.state[params[n]] for n in grown if n.rpartition(".")[0].endswith(".B"))  # Adam stepped them
    rec = run(tiny_config(tiny_bert, method=NAME, method_args={}, targets="qv", steps=6), Store(tmp_path / "r.db"))
    assert rec["cost"]["trainable_params"] == p.method.trainable_parameters(p.model) > start  # the end's count


def test_resume_is_exact_across_growth_steps(tiny_bert, tmp_path, monkeypatch):
    """Growth at steps 3 and 6; killed in step 6, resumed from the checkpoint of step 4 (after one growth), it grows
    again at step 6 and ends with the uninterrupted run's ranks, curve and scores."""
    cls = METHODS.get(NAME)
    seen: dict[str, list] = {"a": [], "b": []}
    now = ["a"]
    real = cls.after_step

    def recording(self, model, step):
        real(self, model, step)
        seen[now[0]].append((step, sorted(map(tuple, self.ranks(model).values()))))

    monkeypatch.setattr(cls, "after_step", recording)
    cfg = tiny_config(tiny_bert, method=NAME, method_args={"rank": 4, "incre_interval": 3}, steps=8, eval_every=3,
                      checkpoint_every=2, batch_size=4, max_train=16, max_eval=8, max_length=32)
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    now[0] = "b"
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["details"]["resumed_from_step"] == 4
    at = dict(seen["a"])
    assert at[3] != [(1,)] * 4 and at[6] != at[3]  # it grew at 3, and again at 6
    assert dict(seen["b"])[8] == at[8]
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])
    assert resumed["scores"] == straight["scores"]
    assert resumed["cost"]["trainable_params"] == straight["cost"]["trainable_params"]


def test_the_orthogonality_regulariser_is_the_references(tiny_bert):
    p = _prepared(tiny_bert)
    m, model = p.method, p.model
    found = [f for _, f in sites(model)]
    model.zero_grad(set_to_none=True)
    m.after_backward(model, 1)
    got = [f.A[0].grad.clone() for f in found]
    model.zero_grad(set_to_none=True)
    terms = []
    for f in found:
        a, b = f.A[0], f.B[0]
        terms += [torch.linalg.matrix_norm(a @ a.T - torch.eye(1)), torch.linalg.matrix_norm(b.T @ b - torch.eye(1))]
    (0.5 * sum(terms) / len(terms)).backward()
    for f, g in zip(found, got, strict=True):
        torch.testing.assert_close(g, f.A[0].grad)


def test_bad_arguments_are_one_line():
    with pytest.raises(ConfigError) as e:
        METHODS.get(NAME).from_config({"init_rank": 9})
    assert str(e.value) == ("method 'triadaptlora': init_rank 9 is larger than rank 8 (the target average rank it "
                            "grows to); give init_rank <= rank.")
