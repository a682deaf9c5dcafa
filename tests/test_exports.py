"""Exports: into a new or empty folder only, or, with ``--overwrite``, into one emptied first; checked before training.

An export into a used folder once left the old adapter's files beside the new ones, and stock PEFT loaded the old.
"""

from __future__ import annotations

import json

import pytest

from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.methods.base import Method
from efficientft.train import run
from tests.conftest import tiny_config


def test_every_method_exports_through_the_one_folder_check():
    for name in METHODS.names():
        assert METHODS.get(name).export is Method.export, f"{name} overrides export(); implement write_export()"


def test_export_into_a_used_folder_refuses_before_training(tiny_bert, store, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"old")
    with pytest.raises(ConfigError) as e:
        run(tiny_config(tiny_bert, export_dir=str(out)), store)
    assert str(e.value) == (f"export folder {out} is not empty (1 entry: adapter_model.safetensors); choose a new "
                            "folder, empty it, or pass --overwrite to replace its contents.")
    assert store.runs() == []  # nothing was trained or stored
    assert (out / "adapter_model.safetensors").read_bytes() == b"old"


def test_cli_export_refusal_is_one_line_and_exit_2(tiny_bert, tmp_path, capsys):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    args = ["run", "--task", "rte", "--model", str(tiny_bert), "--steps", "2", "--batch-size", "8", "--max-train",
            "16", "--max-eval", "16", "--max-length", "32", "--device", "cpu", "--no-progress",
            "--store", str(tmp_path / "s.sqlite"), "--export-dir", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"eft run: error: export folder {out} is not empty (1 entry: stale.bin); choose a new folder, "
                   "empty it, or pass --overwrite to replace its contents.")
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "stale.bin").exists() and (out / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    # the same run again: it is done in the store, which keeps no weights, so an export needs --force
    other = tmp_path / "again"
    args[args.index(str(out))] = str(other)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eft run: error: run ") and err.endswith(
        "is already done in " + str(tmp_path / "s.sqlite") + f" and its weights were not exported to {other} "
        "(only a training run exports): add --force to train it again.")
    assert not other.exists()
    assert main([*args, "--force"]) == 0 and (other / "adapter_model.safetensors").is_file()


def test_overwrite_replaces_a_stale_adapter(tiny_bert, store, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "adapter"
    first = run(tiny_config(tiny_bert, method="lora", targets="qkv", export_dir=str(out)), store)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    (out / "notes.txt").write_text("stale")
    (out / "old").mkdir()
    (out / "old" / "x.safetensors").write_bytes(b"old")
    second = run(tiny_config(tiny_bert, method="lora", targets="qv", method_args={"rank": 2}, export_dir=str(out),
                             overwrite=True), store)
    assert first["run_key"] != second["run_key"]
    assert sorted(f.name for f in out.iterdir()) == second["details"]["export"]["files"]
    assert not (out / "notes.txt").exists() and not (out / "old").exists()
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(out))  # stock PEFT sees the new adapter, not the old one
    assert loaded.peft_config["default"].r == 2
    assert sorted(m.rsplit(".", 1)[-1] for m in loaded.peft_config["default"].target_modules) == [
        "query", "query", "value", "value"]


def test_overwrite_refuses_a_file_and_a_folder_holding_the_working_directory(tiny_bert, store, tmp_path,
                                                                             monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ConfigError, match=f"export folder {f} is a file, not a folder"):
        run(tiny_config(tiny_bert, export_dir=str(f), overwrite=True), store)
    work = tmp_path / "project"
    (work / "src").mkdir(parents=True)
    monkeypatch.chdir(work / "src")
    with pytest.raises(ConfigError, match="holds the current working directory"):
        run(tiny_config(tiny_bert, export_dir=str(work), overwrite=True), store)
    assert (work / "src").is_dir()


@pytest.mark.parametrize("method", [name for name in METHODS.names() if METHODS.get(name).capabilities.export == "model"])
def test_an_exported_model_folder_is_a_model_the_next_run_takes(method, tiny_bert, store, tmp_path, capsys):
    """A method whose export is a whole model folder (full, GaLore, MeZO...) saves the run's tokenizer beside it;
    was: no tokenizer files, so `eft run --model <export>` was refused."""
    out = tmp_path / "export"
    args = {"method_args": {"rank": 4}} if method == "galore" else {"method_args": {}}
    rec = run(tiny_config(tiny_bert, method=method, steps=2, export_dir=str(out), **args), store)
    assert rec["status"] == "done" and "tokenizer_config.json" in rec["details"]["export"]["files"]
    capsys.readouterr()
    code = main(["run", "--model", str(out), "--task", "rte", "--method", "lora", "--steps", "1", "--max-train", "8",
                 "--max-eval", "8", "--max-length", "32", "--no-progress", "--store", str(tmp_path / "s2.sqlite")])
    assert code == 0, capsys.readouterr().err
