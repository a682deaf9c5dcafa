"""Issue 22, "Nothing finished is lost": a run a sweep finishes meanwhile is not trained again (and --force keeps
its tags), inputs longer than the model are refused or cut before training, a failed final evaluation keeps the
trained run, and a deleted MLflow run does not make a checkpoint unresumable."""

import json

import pytest
import torch

import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.resolve import run_key
from efficientft.store import Store
from tests.test_store_integrity import key_of, run_args

SWEEP_TAGS = {"suite": "mine", "entry": 0, "label": "LoRA"}


# ---------------------------------------------------------------------------------------------- a race with a sweep
def test_a_run_a_sweep_finishes_during_set_up_is_not_trained_again(tiny_bert, tmp_path, capsys, monkeypatch):
    db = tmp_path / "s.sqlite"
    cfg = key_of(tiny_bert, db)
    key, real_prepare = run_key(cfg), train_mod.prepare

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
    rec = Store(db).get(run_key(cfg))
    assert rec["attempts"] == 2 and rec["finished_at"] >= first["finished_at"] and rec["tags"] == SWEEP_TAGS
    assert [h["tags"] for h in Store(db).history(run_key(cfg))] == [SWEEP_TAGS]


# ---------------------------------------------------------------------------------------------- inputs longer than the model
def _tiny_gpt2(path, minilm_dir, positions):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=positions,
                               pad_token_id=0, bos_token_id=101, eos_token_id=102)).save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(path))
    return path


def _generation_args(model, tmp_path, *extra):
    rows = [{"instruction": f"add {i} and {i}", "output": f"{i} plus {i} is {2 * i}", "answer": str(2 * i)}
            for i in range(8)]
    long = [{**r, "instruction": "think hard about it " * 30 + r["instruction"]} for r in rows[:2]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.json").write_text(json.dumps(long + rows[2:4]))  # two prompts of ~155 tokens, two of ~35
    return ["run", "--no-progress", "--kind", "generation", "--answer", "number", "--train-file",
            str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "dev.json"), "--model", str(model), "--steps",
            "2", "--batch-size", "4", "--max-length", "64", "--max-new-tokens", "4", "--store",
            str(tmp_path / "s.sqlite"), *extra]


def test_long_evaluation_prompts_are_cut_from_the_left_and_counted(minilm_dir, tmp_path, capsys):
    model = _tiny_gpt2(tmp_path / "gpt2-64", minilm_dir, 64)
    assert main(_generation_args(model, tmp_path, "--json")) == 0  # was: trained, then IndexError at evaluation
    rec = json.loads(capsys.readouterr().out)
    assert rec["status"] == "done" and "dev/exact_match" in rec["scores"]
    assert rec["details"]["info"]["encoding"]["dev"] == {"examples": 4, "truncated": 2, "prompt_cutoff_len": 60}
    assert len(Store(tmp_path / "s.sqlite").predictions(rec["run_key"])) == 4


@pytest.mark.parametrize("extra, msg", [
    (["--max-length", "128"], "max_length 128 is longer than model '{m}' reads: it has 64 positions; give "
                              "--max-length 64 or less."),
    (["--max-new-tokens", "64"], "max_new_tokens 64 leaves no room for a prompt: model '{m}' has 64 positions for "
                                 "prompt and answer together; give --max-new-tokens 61 or less."),
])
def test_lengths_beyond_the_model_positions_are_refused_before_training(extra, msg, minilm_dir, tmp_path, capsys,
                                                                         monkeypatch):
    model = _tiny_gpt2(tmp_path / "gpt2-64", minilm_dir, 64)
    monkeypatch.setattr(train_mod, "train", lambda *a, **kw: pytest.fail("trained"))
    capsys.readouterr()
    assert main(_generation_args(model, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eft run: error: " + msg.format(m=model)
    assert Store(tmp_path / "s.sqlite").runs() == []


def test_a_max_length_beyond_a_classifier_positions_is_refused_before_training(tiny_bert, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    assert main(run_args(tiny_bert, db, "--max-length", "256")) == 2  # was: IndexError at step 1, stored failed
    assert capsys.readouterr().err.strip() == (f"eft run: error: max_length 256 is longer than model "
                                               f"'{tiny_bert}' reads: it has 128 positions; give --max-length 128 or "
                                               f"less.")
    assert Store(db).runs() == []


def test_max_positions_reads_the_config_and_roberta_offset():
    from transformers import BertConfig, GPT2Config, RobertaConfig

    from efficientft.models.loading import max_positions

    assert max_positions(GPT2Config(n_positions=1024)) == 1024
    assert max_positions(BertConfig(max_position_embeddings=512)) == 512
    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # ids start at pad + 1


# ---------------------------------------------------------------------------------------------- final evaluation
def test_a_failed_final_evaluation_keeps_the_trained_run_and_a_rerun_only_evaluates(tiny_bert, tmp_path, monkeypatch,
                                                                                     capsys):
    from efficientft.checkpoint import folder_for, latest
    from tests.test_checkpoint import _config

    cfg = _config(tiny_bert, "lora", steps=4, eval_every=0, checkpoint_every=None)
    straight = train_mod.run(cfg, Store(tmp_path / "a" / "s.sqlite"))
    db = tmp_path / "b" / "s.sqlite"
    real_eval, real_step = train_mod.evaluate_all, train_mod.optimizer_step

    def failing(p):
        monkeypatch.setattr(train_mod, "evaluate_all", real_eval)  # once
        raise RuntimeError("evaluation blew up")

    monkeypatch.setattr(train_mod, "evaluate_all", failing)
    with pytest.raises(RuntimeError, match=r"training finished \(4 steps\) and the final evaluation "
                                                         r"failed \(RuntimeError: evaluation blew up\); the trained "
                                                         r"state is kept in .*step-000000004: run it again"):
        train_mod.run(cfg, Store(db))
    key = run_key(cfg)
    rec = Store(db).get(key)
    assert rec["status"] == "failed" and rec["details"]["failed_in"] == "final evaluation"
    assert rec["error"].startswith("training finished (4 steps) and the final evaluation failed")
    assert [c for c in Store(db).curves(key) if c[2] == "loss"] == [
        c for c in Store(tmp_path / "a" / "s.sqlite").curves(straight["run_key"]) if c[2] == "loss"]  # 4 steps kept
    assert latest(folder_for(db, key)).name == "step-000000004"
    steps = []
    monkeypatch.setattr(train_mod, "optimizer_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    again = train_mod.run(cfg, Store(db))
    assert steps == [] and again["status"] == "done" and again["details"]["resumed_from_step"] == 4
    assert again["scores"] == straight["scores"]  # the model it evaluates is the one that trained
    assert "training had finished: evaluating it" in capsys.readouterr().err
    assert Store(db).curves(key) == Store(tmp_path / "a" / "s.sqlite").curves(straight["run_key"])
    assert latest(folder_for(db, key)) is None  # done: its checkpoint goes


# ---------------------------------------------------------------------------------------------- a deleted MLflow run
def test_a_deleted_mlflow_run_does_not_block_resume(tiny_bert, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from efficientft.checkpoint import TrainState, folder_for, latest
    from tests.test_checkpoint import Killed, _config, _kill_at

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora", tracker=["mlflow"])
    restore = _kill_at(monkeypatch, 6)
    with pytest.raises(Killed):
        train_mod.run(cfg, Store(db))
    restore()
    key = run_key(cfg)
    old = TrainState.read(latest(folder_for(db, key))).trackers["mlflow"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    client.delete_run(old)
    capsys.readouterr()
    rec = train_mod.run(cfg, Store(db))  # was: "tracker 'mlflow' could not start", on every rerun
    assert rec["status"] == "done" and rec["details"]["resumed_from_step"] == 4
    notes = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert notes == [f"note: MLflow run {old}, which this run's checkpoint continues, is deleted or gone; logging to "
                     f"a new MLflow run from step 5."]
    runs = client.search_runs([client.get_experiment_by_name("efficientft").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [(key, "FINISHED")] and runs[0].info.run_id != old
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train.loss")] == [5, 6, 7, 8]


def test_ctrl_c_in_the_final_evaluation_keeps_the_trained_state(tiny_bert, tmp_path, monkeypatch):
    from tests.test_checkpoint import _config

    cfg = _config(tiny_bert, "lora", steps=4, eval_every=0, checkpoint_every=None)
    db = tmp_path / "s.sqlite"
    real_eval, real_step = train_mod.evaluate_all, train_mod.optimizer_step

    def interrupted(p):
        monkeypatch.setattr(train_mod, "evaluate_all", real_eval)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "evaluate_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.run(cfg, Store(db))
    assert Store(db).get(run_key(cfg))["status"] == "cancelled"
    steps = []
    monkeypatch.setattr(train_mod, "optimizer_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    again = train_mod.run(cfg, Store(db))
    assert steps == [] and again["status"] == "done" and again["details"]["resumed_from_step"] == 4


class _Killed(BaseException):
    """What SIGTERM's default action does to the process (it dies), as an exception pytest survives."""


@pytest.mark.parametrize("when", ["final evaluation", "last step"])
def test_sigterm_at_the_end_of_training_keeps_the_trained_state(tiny_bert, tmp_path, monkeypatch, when):
    """SIGTERM in the final evaluation stops it as Ctrl-C does (was: the process died, nothing saved), and SIGTERM
    during the last step saves the trained state (was: stopped without a checkpoint); a rerun only evaluates."""
    import os
    import signal

    from tests.test_checkpoint import _config

    cfg = _config(tiny_bert, "lora", steps=4, eval_every=0, checkpoint_every=None)
    db = tmp_path / "s.sqlite"
    real_eval, real_step = train_mod.evaluate_all, train_mod.optimizer_step

    def die(signum, frame):
        raise _Killed

    def terminated_eval(p):
        monkeypatch.setattr(train_mod, "evaluate_all", real_eval)
        os.kill(os.getpid(), signal.SIGTERM)
        return real_eval(p)

    def terminated_step(p, micro, step, *a, **kw):
        out = real_step(p, micro, step, *a, **kw)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    if when == "final evaluation":
        monkeypatch.setattr(train_mod, "evaluate_all", terminated_eval)
    else:
        monkeypatch.setattr(train_mod, "optimizer_step", terminated_step)
    old = signal.signal(signal.SIGTERM, die)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_mod.run(cfg, Store(db))
    finally:
        signal.signal(signal.SIGTERM, old)
    assert Store(db).get(run_key(cfg))["status"] == "cancelled"
    steps = []
    monkeypatch.setattr(train_mod, "optimizer_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    again = train_mod.run(cfg, Store(db))
    assert steps == [] and again["status"] == "done" and again["details"]["resumed_from_step"] == 4


def test_virtual_tokens_count_against_the_model_positions(tiny_bert, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    args = run_args(tiny_bert, db)
    del args[args.index("--rank"):args.index("--rank") + 2]
    assert main([*args, "--method", "prompt_tuning", "--max-length", "128"]) == 2  # was: a size mismatch at step 1
    assert capsys.readouterr().err.strip() == (
        f"eft run: error: max_length 128 plus the 20 virtual tokens of method 'prompt_tuning' is longer than model "
        f"'{tiny_bert}' reads: it has 128 positions; give --max-length 108 or less.")
    assert Store(db).runs() == []
