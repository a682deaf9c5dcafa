"""Issue 22, "Nothing finished is lost": a run a sweep finishes meanwhile is not trained again (and --force keeps
its tags), inputs longer than the model are refused or cut before training, a failed final evaluation keeps the
trained run, and a deleted MLflow run does not make a checkpoint unresumable."""

import json

import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.store import Store
from tests.test_store_integrity import key_of, run_args

SWEEP_TAGS = {"suite": "mine", "entry": 0, "label": "LoRA"}


# ---------------------------------------------------------------------------------------------- a race with a sweep
def test_a_run_a_sweep_finishes_during_set_up_is_not_trained_again(tiny_bert, tmp_path, capsys, monkeypatch):
    db = tmp_path / "s.sqlite"
    cfg = key_of(tiny_bert, db)
    key, real_prepare = cfg.key(), train_mod.prepare

    def prepare_while_a_sweep_finishes(*a, **kw):
        p = real_prepare(*a, **kw)  # `eft run` checked "already done" before this; a sweep worker now finishes it
        sweep = Store(db)
        assert sweep.claim(key, cfg.to_dict(), SWEEP_TAGS) == (True, "new")
        sweep.finish(key, "done", {"dev/accuracy": 0.5}, main_score=0.5)
        return p

    monkeypatch.setattr(train_mod, "prepare", prepare_while_a_sweep_finishes)
    steps = []
    monkeypatch.setattr(train_mod, "optimizer_step", lambda *a, **kw: steps.append(1))
    assert main(run_args(tiny_bert, db, "--json")) == 0
    out = capsys.readouterr()
    assert f"run {key} was finished by " in out.err and "it was not trained again (use --force" in out.err
    rec = Store(db).get(key)
    assert steps == [] and rec["tags"] == SWEEP_TAGS and rec["scores"] == {"dev/accuracy": 0.5}
    assert rec["attempts"] == 1 and Store(db).history(key) == []
    assert json.loads(out.out)["scores"] == {"dev/accuracy": 0.5}


def test_force_keeps_the_tags_of_the_record_it_replaces(tiny_bert, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    cfg = key_of(tiny_bert, db)
    first = train_mod.run(cfg, Store(db), progress=False, tags=SWEEP_TAGS)  # as a sweep worker runs it
    assert first["status"] == "done" and first["tags"] == SWEEP_TAGS
    assert main(run_args(tiny_bert, db, "--force")) == 0
    rec = Store(db).get(cfg.key())
    assert rec["attempts"] == 2 and rec["finished_at"] >= first["finished_at"] and rec["tags"] == SWEEP_TAGS
    assert [h["tags"] for h in Store(db).history(cfg.key())] == [SWEEP_TAGS]
