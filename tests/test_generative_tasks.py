"""The generation tasks end to end on a tiny causal LM: GSM8K, the math and commonsense suites (one run trains once
and evaluates on every set), and the synthetic task, which a tiny random model learns through the real loop."""

from __future__ import annotations

import json

import pytest

from efficientft.cli import main
from efficientft.store import Store
from efficientft.tasks import get_task
from efficientft.tasks.instruct import SUITES

SMALL = ["--no-progress", "--steps", "2", "--batch-size", "2", "--max-train", "4", "--max-eval", "2",
         "--max-new-tokens", "6", "--max-length", "192", "--eval-batch-size", "8"]


def _run(args, store, capsys) -> dict:
    code = main(["run", *SMALL, *args, "--store", str(store), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_gsm8k_runs_end_to_end(causal_llama, tmp_path, capsys):
    rec = _run(["--task", "gsm8k", "--model", str(causal_llama)], tmp_path / "s.sqlite", capsys)
    assert rec["status"] == "done" and rec["main_metric"] == "dev/exact_match"
    assert rec["config"]["template"] == "alpaca" and "gsm8k/test.jsonl" in " ".join(rec["provenance"]["data_files"])
    preds = Store(tmp_path / "s.sqlite").predictions(rec["run_key"])
    assert len(preds) == 2 and all(p["id"].startswith("gsm8k/test:") for p in preds)
    assert all(p["gold"].lstrip("-").replace(",", "").isdigit() for p in preds)  # the number after ####


def test_the_math_suite_trains_once_and_evaluates_every_set(causal_gpt2, tmp_path, capsys):
    rows = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}. The answer is "
             f"{2 * i}", "answer": str(2 * i)} for i in range(6)]
    train = tmp_path / "math_10k.json"
    train.write_text(json.dumps(rows))
    rec = _run(["--task", "math", "--model", str(causal_gpt2), "--train-data", str(train)], tmp_path / "s.sqlite",
               capsys)
    sets = [s for s in get_task("math").eval_splits]
    assert set(sets) >= {"gsm8k", "aqua", "svamp", "mawps", "addsub", "multiarith", "singleeq"}
    scores = rec["scores"]
    assert all(f"{s}/exact_match" in scores for s in sets)
    assert scores["dev/exact_match"] == pytest.approx(sum(scores[f"{s}/exact_match"] for s in sets) / len(sets))
    preds = Store(tmp_path / "s.sqlite").predictions(rec["run_key"])
    assert {p["split"] for p in preds} == set(sets) and len(preds) == 2 * len(sets)
    assert rec["details"]["info"]["train_examples"] == 4 and str(train) in rec["provenance"]["data_files"]


def test_the_commonsense_suite_trains_on_a_source_that_is_here(causal_llama, tmp_path, capsys):
    rec = _run(["--task", "commonsense", "--model", str(causal_llama), "--train-data", "boolq"],
               tmp_path / "s.sqlite", capsys)
    sets = get_task("commonsense").eval_splits
    assert set(sets) >= {"boolq", "piqa", "siqa", "winogrande", "arc_e", "arc_c", "obqa"}
    assert set(sets) <= set(SUITES["commonsense"])
    assert all(f"{s}/exact_match" in rec["scores"] for s in sets) and "dev/exact_match" in rec["scores"]
    assert any(f.endswith("boolq/train.json") for f in rec["provenance"]["data_files"])
    assert rec["config"]["train_data"] == "boolq"


def test_a_per_task_training_source_is_a_task(causal_llama, tmp_path, capsys):
    rec = _run(["--task", "arc_c", "--model", str(causal_llama)], tmp_path / "s.sqlite", capsys)
    files = rec["provenance"]["data_files"]
    assert any(f.endswith("ARC-Challenge/train.json") for f in files)
    assert any(f.endswith("ARC-Challenge/test.json") for f in files)


# rows of each LLM-Adapters test file (shared/data/llm-adapters/README.md); gsm8k is its own task (official splits)
SET_ROWS = {"boolq": 3270, "piqa": 1838, "siqa": 1954, "winogrande": 1267, "arc_e": 2376, "arc_c": 1172,
            "obqa": 500, "aqua": 254, "svamp": 1000, "mawps": 238, "addsub": 395, "multiarith": 600,
            "singleeq": 508, "mathqa": 2985}


def test_every_set_of_the_suites_is_a_task_of_its_own(capsys):
    from efficientft.tasks.base import DataOptions

    sets = {n for suite in ("math", "commonsense") for n in get_task(suite).eval_splits} - {"gsm8k"}
    assert sets == set(SET_ROWS)  # every set here (HellaSwag's file is not), one task each
    assert main(["tasks"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, rows in SET_ROWS.items():
        task = get_task(name)
        assert task.name == name and task.eval_splits == ("dev",) and name in listed
        suite = next(s for s in SUITES if name in SUITES[s])
        dev = task.load("dev", DataOptions())
        assert len(dev) == rows and dev.files[0].endswith(SUITES[suite][name].path), name
        assert task.eval_spec("dev") == get_task(suite).eval_spec(name)  # judged exactly as in its suite


def test_a_set_without_a_training_split_runs_alone_on_the_suites_training_data(causal_gpt2, tmp_path, capsys):
    assert main(["run", *SMALL, "--task", "svamp", "--model", str(causal_gpt2), "--store",
                 str(tmp_path / "s.sqlite")]) == 2
    assert "pass --train-data with its file (math_10k.json)" in capsys.readouterr().err
    rows = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"The answer is {2 * i}",
             "answer": str(2 * i)} for i in range(6)]
    train = tmp_path / "math_10k.json"
    train.write_text(json.dumps(rows))
    rec = _run(["--task", "svamp", "--model", str(causal_gpt2), "--train-data", str(train)], tmp_path / "s.sqlite",
               capsys)
    assert "dev/exact_match" in rec["scores"] and not any(n in k for k in rec["scores"] for n in SET_ROWS)
    assert rec["details"]["info"]["eval_examples"] == {"dev": 2} and rec["main_metric"] == "dev/exact_match"
    assert any(f.endswith("SVAMP/test.json") for f in rec["provenance"]["data_files"])


@pytest.fixture(scope="module")
def llama64(tmp_path_factory, minilm_dir):
    from tests.gen_fixtures import save_causal

    return save_causal(tmp_path_factory.mktemp("llama64"), "llama", minilm_dir, hidden=64)


def test_a_tiny_random_llama_learns_the_synthetic_task_through_the_loop(llama64, tmp_path):
    """A reduced version of the README demo (300 steps there reach >= 0.9): the loss falls and exact match by
    greedy generation rises far above chance (a random model's is 0)."""
    from efficientft.config import RunConfig
    from efficientft.train import run

    cfg = RunConfig(task="synthetic-repeat", model=str(llama64), method="full", targets="all", steps=100,
                    batch_size=32, lr=3e-3, warmup_ratio=0.17, max_eval=40, eval_batch_size=40, progress=False)
    store = Store(tmp_path / "s.sqlite")
    rec = run(cfg, store)
    losses = [v for kind, step, name, v in store.curves(rec["run_key"]) if kind == "train" and name == "loss"]
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    assert rec["scores"]["dev/exact_match"] >= 0.2, rec["scores"]
