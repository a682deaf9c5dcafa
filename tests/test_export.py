"""``eft export`` and the DataFrame API: a hand-made store (no training) round-trips through CSV, Parquet, JSONL."""

from __future__ import annotations

import json
import math

import pytest

from efficientft.cli import build_parser, config_from_args, main
from efficientft.errors import ConfigError
from efficientft.export import export_store, read_frame, runs_frame, side_path
from efficientft.resolve import resolve, run_key


@pytest.fixture
def filled(store):
    prov = {"code": {"commit": "abc", "dirty": False}, "packages": {"torch": "2.13.0"}, "seed": 0}
    for i, (status, acc) in enumerate((("done", 0.625), ("done", 0.75), ("failed", None))):
        key = f"k{i}"
        cfg = {"task": "rte", "method": "lora", "targets": "qv", "lr": 1e-3, "seed": i, "lr_ratio": 4.0,
               "method_args": {"rank": 8, "alpha": 8.0}, "role_lr": {}, "custom": None,
               "selection_size": 0.1 if i else 100}  # a number of one kind or another: still one column
        store.start(key, cfg, prov, {"suite": "mine", "label": f"LoRA {i}"}, "dev/accuracy")
        store.add_curves(key, [("train", 1, "loss", 0.7 - i / 10), ("train", 2, "loss", 0.6), ("eval", 2,
                                                                                                 "dev/accuracy", 0.5)])
        scores = {"dev/accuracy": acc, "dev/f1": 0.5} if acc is not None else {}
        store.finish(key, status, scores, {"trainable_params": 1000 + i, "wall_s": 1.5}, {"groups": [1, 2]},
                     "RuntimeError: boom" if acc is None else None, acc)
    return store


def test_runs_frame_flattens_every_part(filled):
    df = runs_frame(filled)
    assert list(df["run_key"]) == ["k0", "k1", "k2"]
    assert df.loc[1, "scores.dev/accuracy"] == 0.75 and df.loc[0, "config.method_args.rank"] == 8
    assert df.loc[2, "cost.trainable_params"] == 1002 and df.loc[0, "provenance.packages.torch"] == "2.13.0"
    assert df.loc[1, "tags.label"] == "LoRA 1" and df.loc[2, "error"] == "RuntimeError: boom"
    assert df.loc[0, "config.role_lr"] == "{}" and json.loads(df.loc[0, "details.groups"]) == [1, 2]
    assert math.isnan(df.loc[2, "scores.dev/accuracy"])
    assert list(runs_frame(filled, "failed")["run_key"]) == ["k2"]


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
def test_eft_export_round_trips_against_eft_runs_json(filled, suffix, tmp_path, capsys):
    assert main(["runs", "--store", str(filled.path), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    out = tmp_path / "out" / f"runs.{suffix}"
    assert main(["export", "--store", str(filled.path), "--out", str(out)]) == 0
    assert capsys.readouterr().err.splitlines() == [f"wrote 3 rows to {out}",
                                                    f"wrote 9 rows to {side_path(out, 'curves')}"]
    df = read_frame(out)
    assert len(df) == len(records) == 3
    for rec, (_, row) in zip(records, df.iterrows(), strict=True):
        assert row["run_key"] == rec["run_key"] and row["status"] == rec["status"]
        assert row["main_score"] == rec["main_score"] or (rec["main_score"] is None and math.isnan(row["main_score"]))
        assert row["config.lr"] == rec["config"]["lr"] and row["cost.wall_s"] == rec["cost"]["wall_s"]
    assert df.loc[1, "scores.dev/accuracy"] == records[1]["scores"]["dev/accuracy"] == 0.75
    curves = read_frame(side_path(out, "curves"))
    assert list(curves.columns) == ["run_key", "kind", "step", "name", "value"]
    assert curves[(curves.run_key == "k1") & (curves.kind == "train") & (curves.step == 1)]["value"].item() == 0.6


def test_format_flag_and_status_filter(filled, tmp_path):
    out = tmp_path / "runs.data"
    written = export_store(filled, out, "jsonl", "done")
    assert written == {out: 2, side_path(out, "curves"): 6}
    assert list(read_frame(out, "jsonl")["run_key"]) == ["k0", "k1"]


@pytest.mark.parametrize("args, msg", [
    (["--out", "runs.xlsx"], "eft export: error: cannot tell the export format from 'runs.xlsx': pass --format "
                             "csv|parquet|jsonl or an --out ending in .csv, .parquet or .jsonl."),
    (["--out", "r.csv", "--status", "diverged"], "eft export: error: no runs with status 'diverged' in {store}: "
                                                  "nothing to export."),
])
def test_export_bad_input(filled, args, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--store", str(filled.path), *args]) == 2
    assert capsys.readouterr().err.strip() == msg.format(store=filled.path)


@pytest.mark.parametrize("command", ["runs", "export"])
def test_an_unknown_status_is_named_not_read_as_no_runs(filled, command, tmp_path, capsys):
    assert main([command, "--store", str(filled.path), "--status", "finished", "--out", str(tmp_path / "r.csv")]
                [: None if command == "export" else -2]) == 2
    assert capsys.readouterr().err.strip() == (f"eft {command}: error: unknown run status 'finished'; accepted: "
                                               f"running, done, failed, diverged, cancelled.")


def test_export_to_a_folder(filled, tmp_path, capsys):
    assert main(["export", "--store", str(filled.path), "--out", str(tmp_path), "--format", "csv"]) == 2
    assert capsys.readouterr().err.strip() == (f"eft export: error: --out {str(tmp_path)!r} is a folder; pass a file "
                                               f"name such as {str(tmp_path / 'runs.csv')!r}.")


def test_readers_of_a_missing_store_say_so_and_create_nothing(tmp_path):
    import efficientft as eft

    missing = tmp_path / "typo.sqlite"
    for read in (eft.runs_frame, eft.curves_frame, eft.build_report, lambda s: eft.export_store(s, tmp_path / "r.csv")):
        with pytest.raises(ConfigError, match=f"no results store at {missing}; run something first"):
            read(missing)
    assert not missing.exists()


def test_export_without_a_store(tmp_path, capsys):
    assert main(["export", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "no results store at" in capsys.readouterr().err


def test_run_already_done_with_a_new_export_dir_is_refused(store, tiny_bert, tmp_path, capsys):
    """Only a training run exports: showing a done run must not pretend the weights are in --export-dir."""
    argv = ["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "1", "--max-train", "8",
            "--store", str(store.path), "--export-dir", str(tmp_path / "adapter")]
    cfg = resolve(config_from_args(build_parser().parse_args(argv)))
    store.start(run_key(cfg), cfg.to_dict())
    store.finish(run_key(cfg), "done", {"dev/accuracy": 0.5}, main_score=0.5)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"eft run: error: run {run_key(cfg)} is already done in {store.path} and its weights were not exported to "
        f"{tmp_path / 'adapter'} (only a training run exports): add --force to train it again.")
    assert not (tmp_path / "adapter").exists()
    import efficientft as eft

    with pytest.raises(ConfigError, match="its weights were not exported to"):  # the Python API: the same rule
        eft.run(cfg, store=store)
    assert eft.run(cfg.replace(export_dir=None), store=store)["scores"] == {"dev/accuracy": 0.5}  # no training


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_export_keeps_every_float_bit(store, suffix, tmp_path):
    """pandas' JSON writer keeps 15 significant digits: 0.1 + 0.2 was exported as 0.3 and 1/3 lost its last bits."""
    values = {"a": 0.1 + 0.2, "b": 1 / 3, "c": 2.0 ** -1074, "d": 123456789.12345679}
    store.start("k", {"task": "rte", "lr": 0.1 + 0.2}, {}, {}, "dev/a")
    store.add_curves("k", [("train", 1, "loss", 1 / 3)])
    store.finish("k", "done", {f"dev/{k}": v for k, v in values.items()}, {"wall_s": float("nan")}, {}, None, 1 / 3)
    out = tmp_path / f"runs.{suffix}"
    export_store(store, out)
    if suffix == "jsonl":
        (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        (curve,) = [json.loads(line) for line in side_path(out, "curves").read_text(encoding="utf-8").splitlines()]
        assert row["cost.wall_s"] is None and curve["value"] == 1 / 3  # NaN is null, as pandas writes it
    else:
        row, curve = read_frame(out).iloc[0].to_dict(), read_frame(side_path(out, "curves")).iloc[0].to_dict()
        assert curve["value"] == 1 / 3
    for k, v in values.items():
        assert row[f"scores.dev/{k}"] == v, (k, row[f"scores.dev/{k}"], v)
    assert row["config.lr"] == 0.1 + 0.2 and row["main_score"] == 1 / 3
    assert list(read_frame(out)["scores.dev/a"]) == [0.1 + 0.2]
