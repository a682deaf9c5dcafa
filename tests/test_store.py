import pytest

from efficientft.errors import AlreadyDone
from efficientft.store import Store


def test_lifecycle_and_history(store):
    cfg = {"task": "rte", "method": "lora", "seed": 0}
    assert store.start("k1", cfg, {"seed": 0}) == 1
    assert store.status("k1") == "running"
    store.add_curves("k1", [("train", 1, "loss", 0.7), ("train", 2, "loss", float("nan"))])
    store.finish("k1", "done", {"dev/accuracy": 0.6}, {"trainable_params": 10}, main_score=0.6)
    rec = store.get("k1")
    assert rec["status"] == "done" and rec["scores"] == {"dev/accuracy": 0.6} and rec["main_score"] == 0.6
    assert store.curves("k1") == [("train", 1, "loss", 0.7), ("train", 2, "loss", None)]
    # running a done key again: the done record (and its curves) stays visible until the new attempt is done
    with pytest.raises(AlreadyDone, match=r"run k1 was finished by .* it was not trained again"):
        store.start("k1", cfg)  # done: trained again only when asked (eft run --force)
    assert store.start("k1", cfg, redo_done=True) == 2
    assert store.get("k1")["status"] == "done" and len(store.curves("k1")) == 2 and store.history("k1") == []
    store.add_curves("k1", [("train", 1, "loss", 0.5)])
    assert store.curves("k1")[0] == ("train", 1, "loss", 0.7)
    store.finish("k1", "done", {"dev/accuracy": 0.7}, main_score=0.7)
    rec = store.get("k1")
    assert rec["scores"] == {"dev/accuracy": 0.7} and rec["attempts"] == 2 and rec["config"] == cfg
    assert store.curves("k1") == [("train", 1, "loss", 0.5)]
    assert store.history("k1")[0]["scores"] == {"dev/accuracy": 0.6}  # the finished record is kept in history
    assert store.find("k") is not None and store.find("zz") is None
    store.start("k2", cfg)
    assert [r["run_key"] for r in store.runs("running")] == ["k2"]


def test_unknown_status(store):
    store.start("k", {})
    with pytest.raises(ValueError):
        store.finish("k", "great")


def test_reopen(tmp_path):
    s = Store(tmp_path / "a" / "b.sqlite")
    s.start("x", {"task": "t"})
    assert Store(tmp_path / "a" / "b.sqlite").status("x") == "running"
