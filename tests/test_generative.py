"""The generation track through the real loop: every method on a tiny causal LM, predictions stored and read back,
the cost record, the forgetting score, reports, and bad input refused in one line with exit code 2."""

from __future__ import annotations

import json

import pytest

from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.methods import METHODS
from efficientft.store import Store
from efficientft.train import prepare, run, train
from tests.gen_fixtures import gen_config


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_a_few_steps_on_a_tiny_causal_llama(method, causal_llama):
    cls = METHODS.get(method)  # refuses LLaMA (BitFit: no Q/V biases) or generation (DePT) by design
    if cls.test_args("llama") is None or not cls.capabilities.generation:
        with pytest.raises(ConfigError) as e:
            prepare(gen_config(causal_llama, method=method, steps=2))
        assert method in str(e.value) and "\n" not in str(e.value)
        return
    p = prepare(gen_config(causal_llama, method=method, steps=2))
    assert p.method.ctx.peft_task_type == "CAUSAL_LM" and p.method.ctx.heads == []
    before = {n: q.detach().clone() for n, q in p.model.named_parameters() if q.requires_grad}
    out = train(p, progress=False)
    losses = [v for kind, _, name, v in out["curve"] if kind == "train" and name == "loss"]
    assert len(losses) == 2 and all(v == v and v > 0 for v in losses)
    after = dict(p.model.named_parameters())
    assert any(not after[n].detach().equal(v) for n, v in before.items()), f"{method} changed no weight"
    assert 0.0 <= out["scores"]["dev/exact_match"] <= 1.0


def test_predictions_are_stored_with_the_run_and_read_back(causal_llama, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    rec = run(gen_config(causal_llama, max_eval=5), store)
    assert rec["status"] == "done"
    preds = store.predictions(rec["run_key"])
    assert len(preds) == 5 and {p["split"] for p in preds} == {"dev"}
    for p in preds:
        assert p["id"].startswith("reverse") and isinstance(p["generated"], str) and isinstance(p["correct"], bool)
        assert p["question"].startswith("reverse: ")
    assert rec["scores"]["dev/exact_match"] == pytest.approx(sum(p["correct"] for p in preds) / 5)
    cost = rec["cost"]
    assert cost["generation_s"] > 0 and cost["generated_tokens"] > 0 and cost["eval_s"] >= cost["generation_s"]
    assert cost["train_s"] > 0
    info = rec["details"]["info"]
    assert info["task_kind"] == "generation" and info["encoding"]["train"]["examples"] == 16
    assert info["forgetting"]["source"] == "dev[:32]" and info["forgetting"]["texts"] == 5
    s = rec["scores"]
    assert s["forgetting/increase"] == pytest.approx(s["forgetting/lm_loss"] - s["forgetting/lm_loss_before"])
    assert rec["config"]["template"] == "plain"


def test_a_forgetting_file_is_the_held_out_text(causal_llama, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("the cat sat on the mat\n\nthe dog ran in the park\n")
    p = prepare(gen_config(causal_llama, forgetting_file=str(held)))
    assert p.info["forgetting"]["source"] == str(held) and p.info["forgetting"]["texts"] == 2
    assert p.info["forgetting"]["lm_loss_before"] > 5  # a random model over a 30k vocabulary: ~ln(30522)


def test_a_report_shows_a_generative_run_and_its_examples(causal_llama, tmp_path):
    from efficientft.report.build import build, write

    store = Store(tmp_path / "runs.sqlite")
    run(gen_config(causal_llama, max_eval=3), store)
    rep = build(store)
    files = write(rep, store, tmp_path / "rep", ["md", "html"], plots=False)
    html = next(f for f in files if f.suffix == ".html").read_text()
    md = next(f for f in files if f.suffix == ".md").read_text()
    assert "Syn reverse (EM)" in md and "Syn reverse (EM)" in html
    assert "Generated examples" in html and "reverse: " in html


def _refused(args, capsys) -> str:
    code = main(["run", "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("args, msg", [
    (["--task", "rte", "--template", "alpaca"], "template is a setting of generation tasks; task 'rte' is a "
                                                "classification task"),
    (["--task", "synthetic-reverse", "--template", "alpacca"], "unknown prompt template 'alpacca'. Did you mean "
                                                               "'alpaca'?"),
    (["--task", "synthetic-reverse", "--train-data", "boolq"], "trains on its own training split"),
    (["--task", "math"], "task 'math' trains on a set that is not on this machine: pass --train-data"),
    (["--task", "commonsense", "--train-data", "nope.json"], "--train-data 'nope.json' is neither a file nor a source"),
    (["--kind", "generation"], "--kind and --answer describe your own data"),
    (["--task", "synthetic-reverse", "--feature-cache"], "feature_cache does not work with generation tasks"),
])
def test_bad_generation_input_is_one_line_and_exit_2(args, msg, capsys, causal_llama, tmp_path):
    err = _refused([*args, "--model", str(causal_llama), "--steps", "1", "--store", str(tmp_path / "s.sqlite")],
                   capsys)
    assert err.startswith("eft run: error: ") and msg in err


def test_user_instruction_files_train_and_are_judged_by_their_answer_type(causal_llama, tmp_path, capsys):
    rows = [{"instruction": f"add {i} and {i}", "output": f"{i} plus {i} is {2 * i}", "answer": str(2 * i)}
            for i in range(12)]
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.json"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dev.write_text(json.dumps(rows[:4]))
    store = tmp_path / "s.sqlite"
    code = main(["run", "--no-progress", "--kind", "generation", "--answer", "number", "--train-file", str(train),
                 "--eval-file", str(dev), "--model", str(causal_llama), "--steps", "2", "--batch-size", "4",
                 "--max-new-tokens", "4", "--store", str(store), "--json"])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["config"]["custom"]["type"] == "generation" and rec["config"]["custom"]["answer"] == "number"
    assert rec["config"]["task"].startswith("custom@") and "dev/exact_match" in rec["scores"]
    assert len(Store(store).predictions(rec["run_key"])) == 4
    err = _refused(["--kind", "generation", "--answer", "number", "--train-file", str(train), "--model",
                    str(causal_llama), "--store", str(store)], capsys)
    assert "--kind generation needs --train-file and --eval-file" in err


def test_a_schema_1_store_gains_the_predictions_table_when_written(tmp_path):
    import sqlite3

    path = tmp_path / "v1.sqlite"
    first = Store(path)
    first.start("k1", {"task": "rte"}, {}, None, "dev/accuracy")
    first.finish("k1", "done", {"dev/accuracy": 0.5}, {}, {}, None, 0.5)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE predictions")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    assert Store(path, readonly=True).predictions("k1") == []  # read as it is: nothing to show, no error
    store = Store(path)  # opened to write: migrated
    db = sqlite3.connect(path)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert version == 2 and "predictions" in tables and store.get("k1")["scores"] == {"dev/accuracy": 0.5}


def test_eft_tasks_lists_the_generation_tasks_with_their_kind(capsys):
    assert main(["tasks"]) == 0
    lines = {ln.split()[0]: ln.split()[1] for ln in capsys.readouterr().out.splitlines()}
    assert lines["rte"] == "classification" and lines["stsb"] == "classification"
    for name in ("gsm8k", "math", "commonsense", "boolq", "arc_e", "arc_c", "obqa", "synthetic-reverse"):
        assert lines[name] == "generation", name


def test_generation_stops_at_the_eos_training_appends_even_if_the_model_config_names_another(minilm_dir, tmp_path):
    """A checkpoint whose generation config names another EOS (LLaMA's default 2) must still stop at the
    tokenizer's EOS, which every SFT target ends with; otherwise a trained model runs on past its answer."""
    from efficientft.generation import _eos_ids
    from efficientft.models import load_model
    from efficientft.tasks.generative_kind import GENERATION
    from tests.gen_fixtures import save_causal

    path = save_causal(tmp_path / "m", "llama", minilm_dir)
    loaded = load_model(str(path), 0, head=GENERATION)
    loaded.model.generation_config.eos_token_id = 2
    assert set(_eos_ids(loaded.model, loaded.tokenizer)) == {2, loaded.tokenizer.sep_token_id}


@pytest.mark.parametrize("name, content, msg", [
    ("mm.json", '[{"query": "1+1?", "response": "2"}, {"query": null, "response": "3"}]',
     "mm.json: row 2: the text field 'query' is null; it must be a string."),
    ("mm.jsonl", '{"query": "1+1?", "response": "2"}\n{"query": 7, "response": "3"}\n',
     "mm.jsonl:2: the text field 'query' is the number 7; it must be a string."),
    ("mm.jsonl", '{"query": "1+1?", "response": "  "}\n', "mm.jsonl:1: the text field 'response' is empty"),
    ("mm.jsonl", '{"query": "1+1?", "response": "2"}\n{"query": "x"}\n', "mm.jsonl:2: no 'response' field"),
    ("mm.jsonl", b'{"query": "1+1?", "response": "\xff"}\n', "mm.jsonl:1: not UTF-8"),
])
def test_metamath_rows_are_checked_as_every_training_row(name, content, msg, capsys, causal_llama, tmp_path):
    """A MetaMathQA --train-data file is refused row by row like --train-file rows: `"query": null` used to train
    on the text "None", a number raised a traceback."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = _refused(["--task", "gsm8k", "--train-data", str(path), "--model", str(causal_llama), "--steps", "1",
                    "--store", str(tmp_path / "s.sqlite")], capsys)
    assert msg in err
    assert not (tmp_path / "s.sqlite").exists() or Store(tmp_path / "s.sqlite").runs() == []


@pytest.mark.parametrize("name, content, msg", [
    ("held.json", '"the cat sat on the mat"', "held.json holds 'the cat sat on the mat'; a forgetting file in JSON "
                                             "holds strings or objects with a 'text' key, in one array."),
    ("held.json", '{"text": "the cat sat"}', "held.json holds a mapping of 1 key(s)"),
    ("held.json", '["the cat", 3]', "held.json: item 2 is the number 3"),
    ("held.jsonl", '{"text": "the cat"}\n{"txt": "the dog"}\n', "held.jsonl:2: an object with no 'text' key"),
    ("held.jsonl", '{"text": "the cat"}\n{"text": null}\n', "held.jsonl:2: the text field 'text' is null"),
    ("held.txt", b"the cat\n\xff\n", "held.txt:2: not UTF-8"),
])
def test_a_forgetting_file_that_is_not_a_list_of_texts_is_refused(name, content, msg, causal_llama, tmp_path):
    """A JSON string used to be read as one text per character, an object as its keys."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        prepare(gen_config(causal_llama, forgetting_file=str(path)))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_forgetting_file_in_json_holds_strings_or_text_objects(causal_llama, tmp_path):
    path = tmp_path / "held.json"
    path.write_text(json.dumps(["the cat sat on the mat", {"text": "the dog ran in the park"}]))
    p = prepare(gen_config(causal_llama, forgetting_file=str(path)))
    assert p.info["forgetting"]["texts"] == 2
