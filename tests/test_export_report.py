"""An export is also a store (issue 27): `eft export` writes each record whole (``record.json``), and `eft report`
and `eft report --leaderboard` read the export as they read the store — the same records, curves, tables and
analysis, rebuilt without the store."""

from __future__ import annotations

import pytest

from efficientft.cli import main
from efficientft.export import RECORD, export_store, load_export, read_frame
from tests.board_runs import fill
from tests.test_strategy_analysis import _fill as fill_strategy

pytest.importorskip("pyarrow")


def _without_created(records):
    return sorted(({k: v for k, v in r.items() if k != "created_at"} for r in records), key=lambda r: r["run_key"])


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_an_export_rebuilds_the_store_record_for_record_with_its_curves(tmp_path, suffix):
    store = fill(tmp_path / "board.sqlite")
    keys = [r["run_key"] for r in store.runs()]
    store.start("curvy", {"task": "sst2", "method": "lora", "lr": 0.1 + 0.2, "seed": 0}, {}, {"params": {
        "method_args.rank": 4}}, "dev/accuracy")
    store.add_curves("curvy", [("train", 1, "loss", 0.693), ("train", 2, "loss", 0.5), ("eval", 2, "dev/accuracy",
                                                                                          0.75)])
    store.finish("curvy", "done", scores={"dev/accuracy": 0.75}, cost={"wall_s": 1.5})
    out = tmp_path / f"runs{suffix}"
    export_store(store, out)
    assert RECORD in read_frame(out).columns
    back = load_export(out)
    assert _without_created(back.runs()) == _without_created(store.runs())
    assert back.get("curvy")["config"]["lr"] == 0.1 + 0.2 and back.get("curvy")["tags"]["params"] == {
        "method_args.rank": 4}  # a dotted key and an inexact float survive
    assert back.curves("curvy") == store.curves("curvy") and len(keys) > 10
    assert back.shown_as == f"{out} (an export, rebuilt)"


def test_report_and_leaderboard_from_an_export_equal_those_from_the_store(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    fill_strategy(path, {"lora": 0.02, "ia3": -0.03})
    out = tmp_path / "runs.parquet"
    assert main(["export", "--store", str(path), "--out", str(out)]) == 0
    texts = {}
    for name, src in (("store", path), ("export", out)):
        assert main(["report", "--store", str(src), "--out", str(tmp_path / name), "--format", "md,csv",
                     "--no-plots"]) == 0
        assert main(["report", "--leaderboard", "--store", str(src), "--out", str(tmp_path / f"lb-{name}"),
                     "--format", "md,csv", "--no-plots"]) == 0
        texts[name] = [(tmp_path / name / "report.md").read_text(), (tmp_path / name / "table.csv").read_text(),
                       (tmp_path / f"lb-{name}" / "leaderboard.csv").read_text()]
    store_md, export_md = texts["store"][0], texts["export"][0]
    assert f"Store `{path}`" in store_md and f"Store `{out} (an export, rebuilt)`" in export_md
    assert export_md.replace(f"{out} (an export, rebuilt)", str(path)) == store_md
    assert "## The strategy per method" in export_md
    assert texts["export"][1:] == texts["store"][1:]


def test_an_export_without_records_is_one_line(tmp_path, capsys):
    import pandas as pd

    old = tmp_path / "old.csv"
    pd.DataFrame([{"run_key": "k", "status": "done"}]).to_csv(old, index=False)
    assert main(["report", "--store", str(old), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"eft report: error: '{old}' has no 'record.json' column (written by an older `eft export`): "
                   f"export the store again to rebuild reports from it."]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
