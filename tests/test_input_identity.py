"""Issue 22.2: a run is what it read, not the paths it was given.

A local input (``--train-data``, ``--forgetting-file``, the user's ``--train-file``, a local model folder) enters the
run key by its content: an edited file is a new run, the same file reached by another path is the same run. A
checkpoint records the content of the model and data it trained on and is resumed only onto the same; and each
store keeps its own checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from efficientft.checkpoint import TrainState, folder_for, latest
from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from efficientft.train import run
from tests.gen_fixtures import causal_llama  # noqa: F401 - fixture
from tests.test_checkpoint import Killed, _config, _kill_at


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _other_spelling(path: Path, tmp_path: Path, monkeypatch) -> str:
    """The same file by a relative path from another working directory."""
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    return str(Path("..") / path.relative_to(tmp_path))


# ---------------------------------------------------------------------------------------------- keys by content
ROWS = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"The answer is {2 * i}", "answer": str(2 * i)}
        for i in range(6)]


@pytest.mark.parametrize("field", ["train_data", "forgetting_file"])
def test_a_local_file_is_keyed_by_its_content(field, tmp_path, monkeypatch):
    name = "train.json" if field == "train_data" else "held.txt"
    text = json.dumps(ROWS) if field == "train_data" else "one held-out line\nanother\n"
    f = _write(tmp_path / "data" / name, text)
    key = run_key(RunConfig(task="gsm8k", model="some/causal-lm", **{field: str(f)}))
    same = _other_spelling(f, tmp_path, monkeypatch)
    assert run_key(RunConfig(task="gsm8k", model="some/causal-lm", **{field: same})) == key
    copy = _write(tmp_path / "copy" / name, text)  # the same content anywhere is the same run
    assert run_key(RunConfig(task="gsm8k", model="some/causal-lm", **{field: str(copy)})) == key
    f.write_text(text.replace("e", "E"))  # the same length: only the bytes changed
    assert run_key(RunConfig(task="gsm8k", model="some/causal-lm", **{field: same})) != key


def test_names_the_reader_takes_first_stay_names(tmp_path, monkeypatch):
    """A file that happens to be called like a training source or the bundled model's alias is not what is read."""
    monkeypatch.chdir(tmp_path)
    before = run_key(RunConfig(task="commonsense", model="some/causal-lm", train_data="boolq"))
    mini = run_key(RunConfig())
    _write(tmp_path / "boolq", "[]")
    (tmp_path / "minilm").mkdir()
    _write(tmp_path / "minilm" / "config.json", "{}")
    assert run_key(RunConfig(task="commonsense", model="some/causal-lm", train_data="boolq")) == before
    assert run_key(RunConfig()) == mini == "42dffdc840c53280"  # MiniLM read by mean pooling (its auto head)


def test_custom_data_is_keyed_by_content_not_by_its_paths(tmp_path, monkeypatch):
    train = _write(tmp_path / "d" / "train.csv", "text,label\na,x\nb,y\n")
    dev = _write(tmp_path / "d" / "dev.csv", "text,label\na,x\n")
    cfg = RunConfig(custom={"train": str(train), "dev": str(dev)})
    moved = RunConfig(custom={"train": _other_spelling(train, tmp_path, monkeypatch),
                              "dev": _other_spelling(dev, tmp_path, monkeypatch)})
    assert run_key(moved) == run_key(cfg) and resolve(moved).task == resolve(cfg).task


def test_a_local_model_folder_is_keyed_by_its_config_and_weights(tiny_bert, tmp_path, monkeypatch):
    a = shutil.copytree(tiny_bert, tmp_path / "a")
    b = shutil.copytree(tiny_bert, tmp_path / "b")
    key = run_key(RunConfig(task="rte", model=str(a)))
    assert run_key(RunConfig(task="rte", model=str(b))) == key
    assert run_key(RunConfig(task="rte", model=_other_spelling(a, tmp_path, monkeypatch))) == key
    _perturb(b)
    assert run_key(RunConfig(task="rte", model=str(b))) != key


def _perturb(model_dir: Path) -> None:
    """New weights of the same shapes (as a fine-tuned copy saved over the folder would be)."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    weights = load_file(str(path))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, str(path),
              metadata={"format": "pt"})


def test_an_edited_train_data_file_is_not_already_done(causal_llama, tmp_path, capsys):  # noqa: F811
    train = _write(tmp_path / "train.json", json.dumps(ROWS))
    args = ["run", "--task", "gsm8k", "--model", str(causal_llama), "--train-data", str(train), "--no-progress",
            "--steps", "1", "--batch-size", "2", "--max-train", "4", "--max-eval", "2", "--max-new-tokens", "2",
            "--max-length", "96", "--store", str(tmp_path / "s.sqlite"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    train.write_text(json.dumps(ROWS[::-1]))
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "already done" not in err
    second = json.loads(out)
    assert second["run_key"] != first["run_key"] and second["status"] == "done"
    assert len(Store(tmp_path / "s.sqlite").runs()) == 2


# ---------------------------------------------------------------------------------------------- resume guard
def _killed(monkeypatch, cfg, db):
    restore = _kill_at(monkeypatch, 6)
    with pytest.raises(Killed):
        run(cfg, Store(db))
    restore()
    return latest(folder_for(db, run_key(cfg)))


def test_changed_model_weights_of_the_same_shapes_are_not_resumed(tiny_bert, tmp_path, monkeypatch):
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    db = tmp_path / "runs.sqlite"
    assert _killed(monkeypatch, _config(model, "lora"), db).name == "step-000000004"
    _perturb(model)
    rec = run(_config(model, "lora"), Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    straight = run(_config(model, "lora"), Store(tmp_path / "straight.sqlite"))
    assert rec["scores"] == straight["scores"]  # trained from the new weights, every step


def test_a_checkpoint_of_another_model_is_not_resumed_and_the_run_says_so(tiny_bert, tmp_path, monkeypatch, capsys):
    """The model in the key is a name when it is not a local folder (the bundled MiniLM, a hub id): a checkpoint
    still records the content of the weights it trained on."""
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora")
    path = _killed(monkeypatch, cfg, db)
    state = json.loads((path / "state.json").read_text())
    assert state["inputs"]["model"] == TrainState.read(path).inputs["model"] and len(state["inputs"]["model"]) == 64
    state["inputs"]["model"] = "0" * 64  # as if the weights behind the name had changed since
    (path / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: checkpoint {path} is not resumed, it was saved from other inputs: the model changed since; "
        f"training from scratch."]


def test_changed_glue_data_is_not_resumed(tiny_bert, glue_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "glue"
    shutil.copytree(glue_dir / "RTE", data / "RTE")
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora", data_dir=str(data))
    path = _killed(monkeypatch, cfg, db)
    train = data / "RTE" / "train.tsv"
    train.write_text(train.read_text().replace("\tnot_entailment\n", "\tentailment\n"))  # --data-dir: not in the key
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    assert rec["run_key"] == run_key(cfg)
    assert f"note: checkpoint {path} is not resumed, it was saved from other inputs: the train data changed since; " \
           "training from scratch." in capsys.readouterr().err
    assert latest(folder_for(db, rec["run_key"])) is None  # replaced, then removed when done


def test_the_same_inputs_by_other_paths_resume(tiny_bert, glue_dir, tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    shutil.copytree(glue_dir / "RTE", tmp_path / "glue" / "RTE")
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    _killed(monkeypatch, _config(model, "lora", data_dir=str(tmp_path / "glue")), db)
    rec = run(_config(tiny_bert, "lora", data_dir=str(glue_dir)), Store(db))
    assert rec["details"]["resumed_from_step"] == 4


# ---------------------------------------------------------------------------------------------- one store, its own
def test_two_stores_in_one_folder_keep_their_own_checkpoints(tiny_bert, tmp_path, monkeypatch):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    cfg = _config(tiny_bert, "lora")
    run(cfg, Store(b))  # done in b
    _killed(monkeypatch, cfg, a)  # killed in a after its step-4 checkpoint
    again = run(cfg, Store(b))  # b's `eft run --force`: trains from scratch, a's checkpoint is not b's to delete
    assert "resumed_from_step" not in again["details"]
    assert latest(folder_for(a, again["run_key"])).name == "step-000000004"
    assert run(cfg, Store(a))["details"]["resumed_from_step"] == 4
    fresh = run(cfg, Store(tmp_path / "c.sqlite"))  # a third store does not take another's checkpoint either
    assert "resumed_from_step" not in fresh["details"]


def test_a_checkpoint_where_earlier_versions_saved_it_is_resumed(tiny_bert, tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora")
    path = _killed(monkeypatch, cfg, db)
    key = run_key(cfg)
    old = tmp_path / "checkpoints" / key
    old.parent.mkdir()
    shutil.move(str(path.parent), str(old))
    state = json.loads((old / path.name / "state.json").read_text())
    del state["inputs"]  # saved before checkpoints recorded their inputs
    (old / path.name / "state.json").write_text(json.dumps(state))
    rec = run(cfg, Store(db))
    assert rec["details"]["resumed_from_step"] == 4 and not (tmp_path / "checkpoints").exists()
    assert torch.isfinite(torch.tensor(rec["main_score"]))


def test_a_file_rewritten_with_the_same_size_and_times_is_hashed_again(tmp_path):
    """The digest cache is keyed by stat; a rewrite that keeps size and mtime (a copy tool, a fast rewrite within
    the clock's granularity) must not serve the old digest."""
    import hashlib
    import os

    from efficientft.content import file_sha256, folder_sha256

    f = _write(tmp_path / "m" / "config.json", '{"a": 1}')
    for text in ('{"a": 1}', '{"a": 2}'):
        f.write_text(text)
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
        assert file_sha256(f) == hashlib.sha256(text.encode()).hexdigest()
        assert folder_sha256(tmp_path / "m") == hashlib.sha256(b"config.json" + text.encode()).hexdigest()


def test_a_method_state_that_does_not_load_is_not_resumed(tiny_bert, tmp_path, monkeypatch, capsys):
    """SIFT's chosen entries shape its trainable weights: a checkpoint whose method state this code cannot load
    (saved by another version) starts the run over, in one line, instead of a KeyError on every rerun."""
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "sift")
    path = _killed(monkeypatch, cfg, db)
    state = TrainState.read(path)
    name = sorted(state.blobs["method"])[0]
    state.blobs["method"][name + ".old"] = state.blobs["method"].pop(name)
    state.save(path.parent)
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: checkpoint {path} is not resumed, its sift state does not load (KeyError: '{name}'); training from "
        f"scratch."]
    assert rec["scores"] == run(cfg, Store(tmp_path / "straight.sqlite"))["scores"]
