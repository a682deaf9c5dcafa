"""Pins taken before the layering moved code (issue 24): the run key of every run every shipped suite expands to,
and the shape of a stored run record. A refactor that changes either changes what users' stores mean."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SUITES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "src/efficientft/suites").glob("*.yaml"))
# what a suite leaves to the command line, given the same way each time (nothing is loaded to compute a key)
ENV = {"model": "gpt2", "train_data": "boolq"}


def suite_keys(name: str) -> list[str]:
    from efficientft.sweep.runner import environment
    from efficientft.sweep.suite import load_suite

    suite = load_suite(name)
    env = {**environment(None, None), **{k: v for k, v in ENV.items() if k in suite.requires}}
    return [r.key for r in suite.expand(env)]


def record_shape(record: dict, prefix: str = "") -> list[str]:
    """The record's nested field names (not values): ``cost.wall_s``, ``scores``' metric names left out."""
    out = []
    for k, v in sorted(record.items()):
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(v, dict) and k not in ("scores", "config", "tags") and not path.startswith(("provenance.",)):
            out += record_shape(v, path + ".")
    return out


@pytest.mark.parametrize("name", SUITES)
def test_every_shipped_suite_keeps_its_run_keys(name):
    path = FIXTURES / "suite_keys.json"
    pinned = json.loads(path.read_text())
    if os.environ.get("EFT_WRITE_PINS"):  # only to pin a deliberate change (a new method, a new budget)
        pinned[name] = suite_keys(name)
        path.write_text(json.dumps(dict(sorted(pinned.items())), indent=0) + "\n")
    assert name in pinned, f"new suite {name}: add its keys to tests/fixtures/suite_keys.json (EFT_WRITE_PINS=1)"
    assert suite_keys(name) == pinned[name]


def test_a_stored_record_keeps_its_shape(tmp_path, tiny_bert, glue_dir):
    from efficientft.api import run

    rec = run({"task": "rte", "method": "lora", "model": str(tiny_bert), "steps": 2, "batch_size": 4,
               "max_length": 32, "max_train": 32, "max_eval": 16, "data_dir": str(glue_dir)},
              store=tmp_path / "s.sqlite")
    assert rec["status"] == "done"
    if os.environ.get("EFT_WRITE_PINS"):  # only to pin a deliberate change of the record
        (FIXTURES / "record_shape.json").write_text(json.dumps(record_shape(rec), indent=0))
    pinned = json.loads((FIXTURES / "record_shape.json").read_text())
    assert record_shape(rec) == pinned
