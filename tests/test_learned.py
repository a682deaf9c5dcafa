"""A run knows when it did not learn: trivial baselines per split, the collapsed flag, the report's mark.

A run whose score is the majority class's is not a method's score: every run records what the trivial prediction
scores (``details.baselines``) and whether its predictions collapsed (``details.collapsed``); tables, comparisons,
plots, ``eft runs`` and ``eft show`` say which cells did not beat it (issue 25 §1).
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from efficientft.report.collect import Cell, Collection, Row
from efficientft.report.learned import TOLERANCE, cell_learned
from efficientft.report.stats import summarize
from efficientft.tasks.metrics import collapsed, trivial_baselines
from efficientft.vocab import higher_is_better


# ------------------------------------------------------------------------------------------- baselines (tasks)
def test_majority_class_baselines_on_a_hand_made_split():
    train = [1, 1, 1, 0, 2]  # majority class 1
    gold = np.array([1, 0, 1, 1, 0, 2, 1, 0])  # 4 of 8 are class 1
    b = trivial_baselines(("accuracy", "f1", "mcc"), train, gold, regression=False)
    assert b["accuracy"] == 0.5  # the majority class's share of the evaluation split
    assert b["mcc"] == 0.0
    assert b["f1"] == pytest.approx(2 * 4 / (8 + 4))  # always answering 1: precision 1/2, recall 1


def test_a_tie_takes_the_smallest_class_and_the_train_majority_not_the_eval_one():
    b = trivial_baselines(("accuracy",), [0, 1, 1, 0], [1, 1, 1, 0], regression=False)
    assert b["accuracy"] == 0.25  # class 0 (the smaller of the tied training classes), although 1 rules the split


def test_regression_baseline_is_the_train_mean_and_correlations_of_a_constant_are_zero():
    from efficientft.tasks.metrics import METRICS

    train, gold = [1.0, 2.0, 6.0], [0.5, 3.0, 4.0, 1.0]
    b = trivial_baselines(("pearson", "spearman"), train, gold, regression=True)
    assert b == {"pearson": 0.0, "spearman": 0.0}
    METRICS["mean_value"] = lambda pred, gold: float(np.mean(pred))  # which constant was predicted
    try:
        assert trivial_baselines(("mean_value",), train, gold, regression=True)["mean_value"] == 3.0
    finally:
        del METRICS["mean_value"]


def test_collapsed_predictions():
    assert collapsed([2, 2, 2], [0, 1, 2], regression=False)
    assert not collapsed([2, 1, 2], [0, 1, 2], regression=False)
    assert collapsed([0.30001, 0.3, 0.29999], [0.0, 2.0, 5.0], regression=True)  # a constant in floating point
    assert not collapsed([0.1, 1.9, 4.2], [0.0, 2.0, 5.0], regression=True)
    assert not collapsed([1], [1], regression=False)  # one example cannot say


def test_generation_baseline_is_the_most_frequent_train_answer_else_the_eval_one():
    from efficientft.tasks.generative_kind import SFTEncoded, trivial_exact_match

    enc = SFTEncoded([], None, np.arange(4), {}, gold=["7", "3", "7", "5"], filter="number")
    assert trivial_exact_match(["3", "3", "9"], enc) == 0.25  # "3" from training: right once in 4
    assert trivial_exact_match([], enc) == 0.5  # no training answers: the split's own most frequent ("7")


def test_a_suites_average_has_the_average_baseline_of_its_sets():
    from types import SimpleNamespace

    from efficientft.tasks.generative_kind import GENERATION

    sets = {"arc": SimpleNamespace(extra=False), "boolq": SimpleNamespace(extra=False),
            "extra": SimpleNamespace(extra=True)}
    p = SimpleNamespace(task=SimpleNamespace(eval_splits=("arc", "boolq", "extra"), sets=sets))
    got = GENERATION.summarise_baselines(p, {"arc/exact_match": 0.25, "boolq/exact_match": 0.6,
                                             "extra/exact_match": 0.0})
    assert got == {"dev/exact_match": pytest.approx(0.425)}  # as summarise averages the scores: extras left out


# ------------------------------------------------------------------------------------------- the verdict
def test_cell_learned_judges_against_the_noise_of_the_seeds():
    assert not cell_learned([0.684, 0.684, 0.684], 0.684, True)  # every seed at the majority class
    assert not cell_learned([0.60, 0.80, 0.70], 0.684, True)  # the mean is above, the 95 % CI is not
    assert cell_learned([0.74, 0.75, 0.76], 0.684, True)
    assert not cell_learned([0.684 + TOLERANCE / 2], 0.684, True)  # one run: within the tolerance
    assert cell_learned([0.70], 0.684, True)
    assert not cell_learned([0.0, 0.0], 0.0, True)  # CoLA's MCC 0
    assert cell_learned([1.2, 1.21, 1.19], 2.0, higher_is_better("dev/lm_loss"))  # lower is better: below it
    assert not cell_learned([2.2, 2.21, 2.19], 2.0, higher_is_better("lm_loss"))
    assert not cell_learned([math.nan], 0.5, True)
    assert cell_learned([0.3], math.nan, True)  # no baseline recorded (an old record): nothing says it did not


# ------------------------------------------------------------------------------------------- real runs
WORDS = "the a cat dog house tree river car book table window green small old".split()


def _easy_task(folder: Path) -> dict:
    """A binary task one word decides (40 % positive): a tiny model learns it in ~100 LoRA steps."""
    rng = random.Random(0)
    for split, n in (("train", 256), ("dev", 64)):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["sentence", "label"])
            w.writeheader()
            for _ in range(n):
                y = int(rng.random() < 0.4)
                words = rng.sample(WORDS, 4)
                words.insert(rng.randrange(5), "excellent" if y else "terrible")
                w.writerow({"sentence": " ".join(words), "label": y})
    return {"train": str(folder / "train.csv"), "dev": str(folder / "dev.csv"), "text_columns": "sentence",
            "label_column": "label", "name": "easy"}


@pytest.fixture(scope="module")
def learned_store(tmp_path_factory, tiny_bert):
    """Two runs of the easy task: LoRA at lr 3e-2 (learns) and at lr 1e-8 (an lr of zero is refused; this one
    cannot move in 100 steps)."""
    from efficientft.config import RunConfig
    from efficientft.store import Store
    from efficientft.train import run

    folder = tmp_path_factory.mktemp("easy")
    spec, store = _easy_task(folder), Store(folder / "runs.sqlite")
    recs = {}
    for lr in (3e-2, 1e-8):
        cfg = RunConfig(custom=spec, model=str(tiny_bert), steps=100, batch_size=16, max_length=16, lr=lr,
                        progress=False, method="lora", method_args={"rank": 4})
        recs[lr] = run(cfg, store)
    return store, recs


def test_a_run_records_its_baselines_and_whether_it_collapsed(learned_store):
    _, recs = learned_store
    good, stuck = recs[3e-2], recs[1e-8]
    for rec in (good, stuck):  # the dev split's share of the training majority class
        assert rec["details"]["baselines"] == {"dev/accuracy": _dev_majority_share(rec)}
    assert good["scores"]["dev/accuracy"] >= 0.9 and good["details"]["collapsed"] == {"dev": False}
    assert stuck["details"]["collapsed"] == {"dev": True}


def _dev_majority_share(rec: dict) -> float:
    with open(rec["config"]["custom"]["dev"]) as f:
        labels = [int(r["label"]) for r in csv.DictReader(f)]
    with open(rec["config"]["custom"]["train"]) as f:
        train = [int(r["label"]) for r in csv.DictReader(f)]
    majority = max(set(train), key=lambda c: (train.count(c), -c))
    return labels.count(majority) / len(labels)


def test_eft_runs_and_show_say_which_run_did_not_learn(learned_store, capsys):
    from efficientft.cli import main

    store, recs = learned_store
    assert main(["runs", "--store", str(store.path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    good, stuck = recs[3e-2], recs[1e-8]
    assert " yes " in lines[good["run_key"][:10]]
    assert " NO (collapsed) " in lines[stuck["run_key"][:10]]
    base = f"{stuck['details']['baselines']['dev/accuracy']:.4f}"
    assert base in lines[stuck["run_key"][:10]]
    assert main(["show", stuck["run_key"][:10], "--store", str(store.path)]) == 0
    shown = json.loads(capsys.readouterr().out)["learned"]
    assert shown == {"metric": "dev/accuracy", "score": stuck["main_score"],
                     "baseline": stuck["details"]["baselines"]["dev/accuracy"], "learned": False, "collapsed": True}


def test_the_report_marks_the_cell_that_did_not_learn_and_plots_the_baseline(learned_store, tmp_path, monkeypatch):
    from efficientft.report import html, plots
    from efficientft.report.collect import collect
    from efficientft.report.tables import build_table, markdown

    store, recs = learned_store
    col = collect(store)
    table = build_table(col)
    lines = {tr.labels[-1]: md for tr, md in zip(table.rows, markdown(table).splitlines()[2:], strict=True)}
    assert lines["0.03"].split("|")[-4].strip() == "**100.0** †"  # one seed: the dagger; learned: no mark
    assert lines["1e-08"].split("|")[-4].strip() == "<u>35.9</u> † ✗"  # second of two, and did not learn
    assert any(n.startswith("✗ did not learn") for n in table.notes)
    assert str(html.main_table(table)).count("✗ did not learn</span>") == 2  # its cell and its Avg.

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: figures.append(fig) or [])
    plots.score_vs_cost(col, tmp_path, next(iter(plots.COSTS)))
    baseline = 100 * recs[1e-8]["details"]["baselines"]["dev/accuracy"]
    dashed = [ln for ln in figures[0].axes[0].get_lines() if ln.get_linestyle() == "--"
              and list(ln.get_ydata()) == [baseline, baseline]]
    assert len(dashed) == 1 and dashed[0].get_label() == f"trivial baseline ({baseline:.1f})"
    assert f"baseline {baseline:.1f}" in [t.get_text() for t in figures[0].axes[0].texts]


# ------------------------------------------------------------------------------------------- pooled verdicts
def _cell(task: str, scores: list[float], baseline: float) -> Cell:
    return Cell(task, [{}] * len(scores), {(s, 0): v for s, v in enumerate(scores)}, summarize(scores),
                baseline=baseline, learned=cell_learned(scores, baseline, True))


def _collection() -> Collection:
    a = Row({"method": "a"}, "A", {"sst2": _cell("sst2", [0.90, 0.91, 0.92], 0.5),
                                   "cola": _cell("cola", [0.0, 0.0, 0.0], 0.0)})
    b = Row({"method": "b"}, "B", {"sst2": _cell("sst2", [0.85, 0.86, 0.87], 0.5),
                                   "cola": _cell("cola", [0.30, 0.31, 0.32], 0.0)})
    return Collection("s", "dev", ["sst2", "cola"], {"sst2": "accuracy", "cola": "mcc"}, [a, b], ["method"], {}, {},
                      [], [], {"sst2": True, "cola": True})


def test_a_pooled_comparison_leaves_out_and_names_the_cells_that_did_not_learn():
    from efficientft.report.compare import POOLED, compare
    from efficientft.report.tables import csv_comparisons, md_comparisons

    comps = {c.task: c for c in compare(_collection(), [("A", "B")])}
    assert comps["cola"].not_learned == ("A on cola",) and comps["sst2"].not_learned == ()
    pooled = comps[POOLED]
    assert pooled.excluded == ("cola",)
    assert pooled.result.mean_diff == pytest.approx(0.05)  # SST-2 alone: CoLA's MCC 0 is not averaged in
    text = md_comparisons(list(comps.values()))
    assert "✗ did not learn: A on cola |" in text
    assert "✗ excludes cola (a cell did not learn) |" in text
    assert "excludes cola (a cell did not learn)" in csv_comparisons(list(comps.values()))
