"""Evaluation costs in proportion (issue 25): ``selection_max`` caps the selection split carved from train (the
rest stays in train), and ``eval_every_max`` scores a seeded subsample of each evaluation split at the evaluations
between steps, while the final evaluation scores every example. Both enter the run key only when set."""

from __future__ import annotations

import numpy as np
import pytest

from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.data import Encoded
from efficientft.errors import ConfigError
from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from efficientft.tasks import get_task
from efficientft.tasks.kinds import ClassificationKind
from efficientft.train import Subsampled, load_data, run
from tests.conftest import tiny_config


def test_selection_max_caps_the_carved_split_and_gives_the_rest_back_to_train(glue_dir):
    task = get_task("rte")
    base = dict(task="rte", data_dir=str(glue_dir), selection_size=100, max_eval=None)
    train_all, ev_all = load_data(task, RunConfig(**base))
    train_cap, ev_cap = load_data(task, RunConfig(**base, selection_max=10))
    assert len(ev_all["selection"]) == 100 and len(ev_cap["selection"]) == 10
    assert len(train_cap) == len(train_all) + 90  # nothing is lost: what the cap leaves out trains
    held = set(zip(ev_all["selection"].text_a, ev_all["selection"].text_b, strict=True))
    assert set(zip(ev_cap["selection"].text_a, ev_cap["selection"].text_b, strict=True)) <= held  # seeded order
    # a cap above the split's size changes nothing but the key
    _, ev_big = load_data(task, RunConfig(**base, selection_max=1000))
    assert ev_big["selection"].text_a == ev_all["selection"].text_a


@pytest.fixture
def scored(monkeypatch):
    """(split, number of examples, their first token ids) of every evaluation a run makes."""
    seen: list[tuple[str, int, tuple]] = []
    original = ClassificationKind.evaluate

    def evaluate(self, p, split):
        enc = p.evals[split]
        seen.append((split, len(enc), tuple(int(ids[1]) for ids in enc.ids)))
        return original(self, p, split)

    monkeypatch.setattr(ClassificationKind, "evaluate", evaluate)
    return seen


def test_intermediate_evaluations_score_a_seeded_subsample_and_the_final_one_everything(tiny_bert, glue_dir,
                                                                                     tmp_path, scored):
    cfg = tiny_config(tiny_bert, data_dir=str(glue_dir), steps=3, eval_every=1, eval_every_max=5, max_eval=20,
                      selection_size=40, selection_max=7)
    rec = run(cfg, Store(tmp_path / "s.sqlite"))
    assert rec["status"] == "done"
    by_split = {s: [(n, ids) for sp, n, ids in scored if sp == s] for s in ("selection", "dev")}
    for split, full in (("selection", 7), ("dev", 20)):
        (n1, ids1), (n2, ids2), (n3, ids3) = by_split[split]  # steps 1 and 2 between steps, step 3 the final
        assert (n1, n2, n3) == (5, 5, full)
        assert ids1 == ids2  # the same seeded examples at every intermediate evaluation
        assert set(ids1) <= set(ids3)  # drawn from the whole split
    info = rec["details"]["info"]
    assert info["eval_examples"] == {"selection": 7, "dev": 20}
    assert info["eval_examples_during"] == {"selection": 5, "dev": 5}
    # another training seed draws the same subsample (it is the data seed's)
    first = [(sp, ids) for sp, n, ids in scored if n == 5]
    scored.clear()
    run(cfg.replace(seed=1), Store(tmp_path / "t.sqlite"))
    assert [(sp, ids) for sp, n, ids in scored if n == 5] == first


def test_a_subsample_maps_its_examples_back_to_the_whole_split():
    ids = [np.array([101, i, 102]) for i in range(50)]
    enc = Encoded(ids, None, np.arange(50))
    called = []

    class Run:
        evals = {"dev": enc}
        cfg = "the run's"

        def forward(self, split, idx, batch):
            called.append((split, list(idx)))

    view = Subsampled(Run(), 8, seed=3)
    sub = view.evals["dev"]
    assert len(sub) == 8 and view.cfg == "the run's"
    assert [int(x[1]) for x in sub.ids] == list(sub.labels) == view.index["dev"]  # every per-example field
    assert Subsampled(Run(), 8, seed=3).index == view.index  # seeded
    assert Subsampled(Run(), 8, seed=4).index != view.index
    view.forward("dev", [0, 7], {})
    assert called == [("dev", [view.index["dev"][0], view.index["dev"][7]])]  # cached features are by these
    assert Subsampled(Run(), 80, seed=3).evals["dev"] is enc  # a split no larger than the cap is scored whole


def test_a_generation_splits_subsample_keeps_its_protocol():
    from efficientft.tasks.generative_kind import SFTEncoded

    enc = SFTEncoded([np.array([1, i]) for i in range(6)], None, np.arange(6), {"truncated": 2}, [],
                     [f"q{i}" for i in range(6)], [f"id{i}" for i in range(6)], [f"Q{i}" for i in range(6)],
                     [str(i) for i in range(6)], [f"o{i}" for i in range(6)], "number", 8, ("\n",))
    sub = enc.subset([1, 4])
    assert isinstance(sub, SFTEncoded) and sub.prompts == ["q1", "q4"] and sub.gold == ["1", "4"]
    assert sub.example_ids == ["id1", "id4"] and list(sub.labels) == [1, 4] and sub.targets == []
    assert (sub.filter, sub.max_new_tokens, sub.stop, sub.stats) == ("number", 8, ("\n",), {"truncated": 2})


def test_a_run_that_does_not_score_the_official_splits_never_reads_or_evaluates_them(tiny_bert, glue_dir, tmp_path,
                                                                                      scored):
    """A search's trial runs (``score_official: false``) are judged on the selection split: dev is not read, not
    encoded, not evaluated (between steps or at the end), and the run's main score is its selection score."""
    cfg = tiny_config(tiny_bert, data_dir=str(glue_dir), steps=3, eval_every=2, max_eval=20, selection_size=40,
                      score_official=False)
    rec = run(cfg, Store(tmp_path / "s.sqlite"))
    assert rec["status"] == "done"
    assert [(sp, n) for sp, n, _ in scored] == [("selection", 20), ("selection", 20)]  # step 2 and the end (max_eval)
    assert rec["scores"] and all(k.startswith("selection/") for k in rec["scores"])
    assert rec["main_metric"] == "selection/accuracy" and rec["main_score"] == rec["scores"]["selection/accuracy"]
    assert rec["details"]["info"]["eval_examples"] == {"selection": 20}
    _, evals = load_data(get_task("rte"), RunConfig(task="rte", data_dir=str(glue_dir), selection_size=40,
                                                    score_official=False))
    assert list(evals) == ["selection"]


def test_keys_move_only_when_the_settings_are_set():
    plain = RunConfig(selection_size=0.1, eval_every=10)
    assert {"selection_max", "eval_every_max", "score_official"}.isdisjoint(plain.identity())
    keys = {run_key(resolve(c)) for c in (plain, plain.replace(selection_max=100), plain.replace(eval_every_max=50),
                                          plain.replace(score_official=False), plain.replace(score_official=True))}
    assert len(keys) == 4  # score_official=True is the default: the key every run had before the setting


@pytest.mark.parametrize("kw,msg", [
    ({"selection_max": 10}, "selection_max=10 caps the selection split, but there is none; give selection_size"),
    ({"eval_every_max": 10}, "eval_every_max=10 subsamples the evaluations between steps, but there are none"),
    ({"selection_size": 0.1, "selection_max": 0}, "selection_max must be a positive integer"),
    ({"score_official": False}, "score_official=false leaves the selection split as the only one scored, but there "
                                "is none; give selection_size too"),
])
def test_settings_without_their_partner_are_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RunConfig(**kw)


def test_cli_flags_are_derived_and_checked(tmp_path, capsys):
    rc = main(["run", "--task", "rte", "--store", str(tmp_path / "s.sqlite"), "--selection-max", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "give selection_size too" in err, err


def test_the_official_splits_are_left_unscored_by_a_no_switch(tmp_path, capsys):
    rc = main(["run", "--task", "rte", "--store", str(tmp_path / "s.sqlite"), "--no-score-official"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "score_official=false" in err and "give selection_size too" in err


def test_a_suites_selection_block_takes_the_cap(tmp_path):
    from efficientft.sweep import load_suite

    p = tmp_path / "s.yaml"
    p.write_text("defaults: {task: rte, steps: 2}\nmethods:\n  - {method: lora}\n"
                 "selection: {selection_size: 0.2, selection_max: 300}\n")
    (run_,) = load_suite(p).expand(validate=False)
    assert run_.cfg.selection_size == 0.2 and run_.cfg.selection_max == 300
    p.write_text("defaults: {task: rte, steps: 2}\nmethods:\n  - {method: lora}\nselection: {selection_size: 0.2}\n")
    (plain,) = load_suite(p).expand(validate=False)
    assert plain.cfg.selection_max is None and "selection_max" not in plain.cfg.identity()
    p.write_text("defaults: {task: rte, steps: 2}\nmethods:\n  - {method: lora}\n"
                 "selection: {selection_size: 0.2, selection_max: 0}\n")
    with pytest.raises(ConfigError, match="selection_max must be a positive integer"):
        load_suite(p).expand(validate=False)
