"""A metric's direction is known in one place (:func:`efficientft.vocab.higher_is_better`) and every choice reads
it: the sweep's selection, successive halving, the report's learning-rate choice and its bold mark pick the
*minimum* of a lower-is-better metric (an LM loss, the forgetting score) and the maximum of any other."""

from __future__ import annotations

import pytest

from efficientft.choice import best
from efficientft.config import RunConfig
from efficientft.report import tables
from efficientft.report.build import build
from efficientft.report.collect import select_lr
from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from efficientft.sweep.selection import halving, select
from efficientft.tasks.generative_kind import GenerationKind
from efficientft.tasks.kinds import CLASSIFICATION
from efficientft.vocab import LOWER_IS_BETTER, higher_is_better


def test_direction_lives_in_the_core_and_the_kinds_read_it():
    assert {"lm_loss", "increase", "lm_loss_before", "loss"} <= LOWER_IS_BETTER
    assert not higher_is_better("dev/lm_loss") and not higher_is_better("forgetting/increase")
    assert higher_is_better("selection/accuracy") and higher_is_better("exact_match")
    for kind in (CLASSIFICATION, GenerationKind()):  # one answer, whatever the kind
        assert not kind.higher_is_better("dev/lm_loss") and kind.higher_is_better("dev/accuracy")


def _rec(metric, lr, seed, sel, dev):
    return {"run_key": f"{lr}-{seed}", "status": "done", "main_metric": f"dev/{metric}",
            "config": {"task": "alpaca", "method": "lora", "targets": "qv", "lr": lr, "seed": seed},
            "scores": {f"selection/{metric}": sel, f"dev/{metric}": dev, f"best_dev/{metric}": dev}}


# lr 1e-3 has the lower selection loss (the better one); lr 1e-2 the higher
LOSSES = {1e-3: (1.2, 1.4), 1e-2: (2.5, 2.7)}


@pytest.mark.parametrize("metric,chosen", [("lm_loss", 1e-3), ("accuracy", 1e-2)])
def test_selection_minimises_a_lower_is_better_metric(metric, chosen):
    recs = [_rec(metric, lr, seed, s, s + 0.1) for lr, ss in LOSSES.items() for seed, s in enumerate(ss)]
    (row,) = select(recs, by="main", over=["lr"])
    assert row["selected_by"] == f"selection/{metric}" and row["chosen"] == {"lr": chosen}
    (row,) = select(recs, over=["lr"], convention="best_dev")  # the optimistic convention too
    assert row["chosen"] == {"lr": chosen}
    lr, basis, means = select_lr({lr: [r for r in recs if r["config"]["lr"] == lr] for lr in LOSSES}, metric)
    assert basis == "selection" and lr == chosen and means == pytest.approx({1e-3: 1.3, 1e-2: 2.6})


def test_halving_keeps_the_lowest_losses():
    scores = {"a": 0.5, "b": 0.9, "c": 0.7, "d": None, "e": 0.8, "f": 0.1}
    assert halving(scores, 2, "selection/lm_loss") == ["f", "a", "c"]  # missing scores still rank last
    assert halving(scores, 2, "selection/accuracy") == ["b", "e", "c"]
    assert halving({"a": 0.7, "b": 0.7}, 2, "forgetting/increase") == ["a"]  # ties: the earlier candidate
    assert best({"x": 3.0, "y": 1.0, "z": None}, "dev/lm_loss") == "y"
    assert best({"x": 3.0, "y": 1.0, "z": None}, "dev/accuracy") == "x"


def _stored(store, lr, seed, metric, score):
    cfg = resolve(RunConfig(task="sst2", method="lora", lr=lr, seed=seed, steps=10))
    store.start(run_key(cfg), cfg.to_dict(), {}, {"label": "lora"}, f"dev/{metric}")
    store.finish(run_key(cfg), "done", {f"dev/{metric}": score}, {"trainable_params": 100}, main_score=score)


@pytest.mark.parametrize("metric,bold,underlined", [("lm_loss", 1e-3, 3e-3), ("accuracy", 1e-2, 3e-3)])
def test_the_report_marks_the_lowest_loss_bold(tmp_path, metric, bold, underlined):
    store = Store(tmp_path / "s.sqlite")
    for lr, score in ((1e-3, 0.2), (3e-3, 0.5), (1e-2, 0.9)):
        _stored(store, lr, 0, metric, score)
    rep = build(store)
    rank = {tr.row.fields["lr"]: tr.scores[0].rank for tr in rep.table.rows}
    assert rank == {bold: 1, underlined: 2, ({1e-3, 3e-3, 1e-2} - {bold, underlined}).pop(): 0}
    cells = {tr.row.fields["lr"]: tables.md_score(tr.scores[0], 1) for tr in rep.table.rows}
    assert cells[bold].startswith("**") and not cells[underlined].startswith("**")
