"""Step checkpoints and exact resume: a run killed after a checkpoint ends with the numbers of an uninterrupted one.

The matrix runs every registered method on a tiny BERT (dropout on: the RNG must be restored too) for 8 steps with
evaluations every 3 steps, once straight through and once "killed" in the middle of step 6 (the checkpoint of step
4 is the last one: the work of step 5 is lost), then resumed. Scores and every curve point must be equal (==).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import efficientft.train as train_mod
from efficientft import checkpoint
from efficientft.checkpoint import TrainState, default_every, folder_for, latest
from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.methods import METHODS
from efficientft.resolve import run_key
from efficientft.store import Store
from efficientft.train import run
from tests.conftest import skip_where_the_model_lacks_what_the_method_feeds, tiny_config
from tests.test_conformance import method_args


class Killed(Exception):
    """Stands for the process dying: the attempt ends without reaching the end of its step."""


def _config(model, name, **kw):
    base = dict(method=name, method_args=method_args(name), steps=8, eval_every=3, checkpoint_every=2,
                batch_size=4, max_train=16, max_eval=8, max_length=32)
    base.update(kw)
    return tiny_config(model, **base)


def _kill_at(monkeypatch, step):
    """Make the attempt die inside optimizer step ``step`` (after its forward and backward began)."""
    real = train_mod.optimizer_step

    def dying(p, micro, at, *a, **kw):
        if at == step:
            raise Killed(f"killed at step {step}")
        return real(p, micro, at, *a, **kw)

    monkeypatch.setattr(train_mod, "optimizer_step", dying)
    return lambda: monkeypatch.setattr(train_mod, "optimizer_step", real)


def _interrupted_then_resumed(monkeypatch, cfg, db):
    store = Store(db)
    restore = _kill_at(monkeypatch, 6)
    with pytest.raises(Killed):
        run(cfg, store)
    restore()
    key = run_key(cfg)
    saved = latest(folder_for(db, key))
    assert saved is not None and saved.name == "step-000000004"
    return run(cfg, Store(db)), Store(db).curves(key)


@pytest.mark.parametrize("name", METHODS.names())
def test_resumed_run_equals_the_uninterrupted_run(name, tiny_bert, tmp_path, monkeypatch):
    skip_where_the_model_lacks_what_the_method_feeds(name, tiny_bert)
    cfg = _config(tiny_bert, name)
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["status"] == "done" and resumed["details"]["resumed_from_step"] == 4
    assert resumed["scores"] == straight["scores"]
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])
    assert len([c for c in curves if c[2] == "loss"]) == 8 and {c[1] for c in curves if c[0] == "eval"} == {3, 6, 8}
    assert "resumed_from_step" not in straight["details"]
    for figure in ("tokens_trained", "examples_trained", "steps_timed", "padding_fraction", "optimizer_state_numel",
                   "trainable_params", "total_params", "model_flops"):  # the whole run's, not the last attempt's
        assert resumed["cost"][figure] == straight["cost"][figure], figure
    assert not folder_for(tmp_path / "b" / "runs.sqlite", resumed["run_key"]).exists()  # removed when done


def test_galore_needs_its_projectors_for_an_exact_resume(tiny_bert, tmp_path, monkeypatch):
    """The matrix above can fail: resumed without the projectors kept in its optimizer state, GaLore computes new
    ones from the first resumed gradient, and the curve differs."""
    cfg = _config(tiny_bert, "galore", lr=1e-2)
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    monkeypatch.setattr(METHODS.get("galore"), "load_optimizer_state_dict", lambda self, opt, sd: opt.load_state_dict(
        {**sd, "state": {i: {k: v for k, v in s.items() if k != "projector"} for i, s in sd["state"].items()}}))
    _, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert curves != Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])


@pytest.mark.parametrize("restored", [True, False])
def test_adalora_rank_allocator_continues_exactly(restored, tiny_bert, tmp_path, monkeypatch):
    """AdaLoRA's importance averages (which choose the triplets to prune) go on from where they were."""
    cls = METHODS.get("adalora")
    seen: dict[str, list] = {"a": [], "b": []}
    now = ["a"]
    real = cls.after_step

    def recording(self, model, step):
        real(self, model, step)
        alloc = model.base_model.rankallocator
        seen[now[0]].append((step, sum(float(v.sum()) for v in alloc.exp_avg_ipt.values())))

    monkeypatch.setattr(cls, "after_step", recording)
    if not restored:
        monkeypatch.setattr(cls, "load_state_dict", lambda self, model, state: None)
    cfg = _config(tiny_bert, "adalora", method_args={"rank": 4, "tinit": 1, "tfinal": 1, "delta_t": 1})
    run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    now[0] = "b"
    _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    after = [s for s in seen["b"] if s[0] > 4][-3:]  # steps 6, 7, 8 of the resumed attempt
    assert [s[0] for s in after] == [6, 7, 8]
    assert (after == seen["a"][-3:]) is restored


def test_without_the_rng_state_dropout_differs(tiny_bert, tmp_path, monkeypatch):
    cfg = _config(tiny_bert, "lora")
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    _, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert curves != Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])


def test_resume_with_grad_accum_and_the_data_cursor_past_an_epoch(tiny_bert, tmp_path, monkeypatch):
    # 14 examples in batches of 4: 4 batches an epoch (the last short); 2 per step: step 5 starts the 3rd epoch
    cfg = _config(tiny_bert, "lora", grad_accum=2, max_train=14)
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["scores"] == straight["scores"]
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])


def test_resume_under_fp16_with_length_buckets(tiny_bert, tmp_path, monkeypatch):
    """The GradScaler's scale and growth tracker continue; bucketed batches continue from the cursor."""
    cfg = _config(tiny_bert, "lora", precision="fp16", bucket=True)
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["scores"] == straight["scores"]
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])


def _killed_once(monkeypatch, cfg, db):
    restore = _kill_at(monkeypatch, 6)
    with pytest.raises(Killed):
        run(cfg, Store(db))
    restore()
    return latest(folder_for(db, run_key(cfg)))


def test_an_unreadable_checkpoint_is_set_aside_and_the_run_starts_over(tiny_bert, tmp_path, monkeypatch, capsys):
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora")
    path = _killed_once(monkeypatch, cfg, db)
    (path / "state.json").write_text("{not json")
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    err = capsys.readouterr().err
    assert f"note: checkpoint {path} cannot be read (JSONDecodeError: " in err
    assert "set aside as .unreadable-step-000000004, training from scratch." in err


@pytest.mark.parametrize("field, value, said", [
    ("step", "4", 'holds "4" as \'step\''),  # was: TypeError in run(), after the claim
    ("curve", 5, "holds 5 as 'curve'"),  # was: TypeError when training resumed: a failed run on every rerun
    ("evals", {"a": 1}, 'holds {"a": 1} as \'evals\''),
    ("trackers", [1], "holds [1] as 'trackers'"),  # was: resumed, silently
    (None, None, "holds a JSON list, not an object"),
])
def test_a_state_file_that_parses_but_holds_other_things_is_set_aside(tiny_bert, tmp_path, monkeypatch, capsys,
                                                                      field, value, said):
    """A damaged or edited state.json that is still JSON is unreadable as one that is not: one line, a fresh start."""
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora")
    path = _killed_once(monkeypatch, cfg, db)
    meta = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps([meta] if field is None else {**meta, field: value}))
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    notes = [line for line in capsys.readouterr().err.splitlines() if "checkpoint" in line]
    assert notes == [f"note: checkpoint {path} cannot be read (ValueError: its state.json {said}); set aside as "
                     ".unreadable-step-000000004, training from scratch."]


def test_a_checkpoint_that_does_not_fit_the_model_is_not_resumed_and_the_run_says_so(tiny_bert, tmp_path,
                                                                                     monkeypatch, capsys):
    """Issue 22: it was a traceback and a ``failed`` row on every rerun, until the folder was deleted by hand."""
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora")
    path = _killed_once(monkeypatch, cfg, db)
    state = TrainState.read(path)
    name = sorted(state.blobs["model"])[0]
    state.blobs["model"][name + ".old"] = state.blobs["model"].pop(name)  # as if the code had renamed a weight
    state.save(path.parent)
    capsys.readouterr()
    rec = run(cfg, Store(db))
    assert rec["status"] == "done" and "resumed_from_step" not in rec["details"]
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: checkpoint {path} is not resumed, it does not fit this run's model (its trainable weights differ: "
        f"{name}, {name}.old); training from scratch."]


def test_checkpoint_files_are_safetensors_and_json_and_only_the_last_is_kept(tiny_bert, tmp_path):
    db = tmp_path / "runs.sqlite"
    rec = run(_config(tiny_bert, "sift", keep_checkpoints=True), Store(db))
    folder = folder_for(db, rec["run_key"])
    assert folder == tmp_path / "runs.sqlite.checkpoints" / rec["run_key"]
    (only,) = folder.iterdir()  # steps 2, 4, 6 were saved; the newest stays (kept: the run is done)
    assert only.name == "step-000000006"
    assert sorted(f.name for f in only.iterdir()) == ["state.json", "tensors.safetensors"]
    state = TrainState.read(only)
    assert state.step == 6 and state.drawn == 6
    chosen = state.blobs["method"]  # SIFT's chosen entries: (rows, cols) of each sparse increment
    assert sorted(k.rsplit(".", 1)[1] for k in chosen) == ["q", "q", "v", "v"]
    assert all(t.dtype == torch.long and t.shape[0] == 2 for t in chosen.values())


def test_keep_checkpoints_and_force_does_not_resume_a_done_run(tiny_bert, tmp_path, monkeypatch):
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora", keep_checkpoints=True)
    run(cfg, Store(db))
    folder = folder_for(db, run_key(cfg))
    assert latest(folder).name == "step-000000006"
    restore = _kill_at(monkeypatch, 4)
    with pytest.raises(Killed):  # `eft run --force`: trains again from the start, and is killed at step 4
        run(cfg, Store(db), force=True)
    restore()
    assert [p.name for p in folder.iterdir()] == ["step-000000002"]  # its own, not the done run's step 6
    again = run(cfg, Store(db), force=True)
    assert again["status"] == "done" and "resumed_from_step" not in again["details"]  # the row is still done


def test_default_interval_is_on_for_long_runs_only():
    assert default_every(499) == 0
    assert default_every(500) == 100
    assert default_every(5000) == 500


def test_bad_checkpoint_every_is_refused_with_exit_2(tiny_bert, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "2", "--checkpoint-every", "-1",
                 "--store", str(tmp_path / "s.sqlite")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "eft run: error: checkpoint_every must be an integer in [0, 2147483647], got -1.")
    assert not (tmp_path / "s.sqlite").exists() or Store(tmp_path / "s.sqlite").runs() == []


def _cli(tiny_bert, db, steps, *extra):
    return [sys.executable, "-m", "efficientft", "run", "--model", str(tiny_bert), "--task", "rte", "--steps",
            str(steps), "--max-train", "32", "--max-eval", "16", "--max-length", "48", "--batch-size", "8", "--rank",
            "2", "--store", str(db), "--no-progress", "--json", *extra]


def _wait(pred, proc, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what} never happened")


def _step_of(folder):
    path = latest(folder)
    return int(path.name.removeprefix("step-")) if path is not None else 0


def _started(db, proc):
    """The key of the run the subprocess has started (its row is running)."""
    _wait(lambda: db.exists() and any(r["status"] == "running" for r in Store(db).runs()), proc, "the run's start")
    (rec,) = Store(db).runs()
    return rec["run_key"], RunConfig.from_dict(rec["config"])


def test_sigkill_then_rerun_resumes_and_matches_the_uninterrupted_run(tiny_bert, tmp_path):
    import json

    steps = 60
    db = tmp_path / "killed" / "runs.sqlite"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = _cli(tiny_bert, db, steps, "--checkpoint-every", "5", "--eval-every", "25")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    key, cfg = _started(db, proc)
    folder = folder_for(db, key)
    _wait(lambda: _step_of(folder) >= 10, proc, "a checkpoint at step 10")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Store(db).get(key)["status"] == "running"  # a dead pid's row
    at = _step_of(folder)
    assert 10 <= at < steps

    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout)
    assert rec["status"] == "done" and rec["details"]["resumed_from_step"] == at and rec["run_key"] == key
    straight = run(cfg.replace(checkpoint_every=0), Store(tmp_path / "straight" / "runs.sqlite"))
    assert rec["scores"] == straight["scores"]
    assert Store(db).curves(key) == Store(tmp_path / "straight" / "runs.sqlite").curves(key)
    assert not folder.exists()


def test_sigterm_saves_a_checkpoint_and_a_sweep_resumes_the_run(tiny_bert, tmp_path):
    from efficientft.sweep.executors import execute_one

    db = tmp_path / "runs.sqlite"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = _cli(tiny_bert, db, 100000, "--checkpoint-every", "100000")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    key, cfg = _started(db, proc)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert Store(db).get(key)["status"] == "cancelled"
    at = _step_of(folder_for(db, key))
    assert at > 0  # saved on SIGTERM, long before the first periodic checkpoint

    item = {"key": key, "config": cfg.to_dict(), "tags": {}, "describe": "rte lora"}
    restore = _kill_at_step(at + 2)
    try:
        out = execute_one(item, str(db))  # what a sweep does with each of its runs
    finally:
        restore()
    assert out["status"] == "failed"  # the stand-in for a kill, two steps after the resume
    assert f"Killed: resumed from step {at}, killed at step {at + 2}" in Store(db).get(key)["error"]
    assert _step_of(folder_for(db, key)) == at  # nothing saved since: checkpoints every 100000 steps


def _kill_at_step(step):
    real = train_mod.optimizer_step

    def dying(p, micro, at, *a, **kw):
        if at == step:
            raise Killed(f"resumed from step {p.resume.step if p.resume else None}, killed at step {step}")
        return real(p, micro, at, *a, **kw)

    train_mod.optimizer_step = dying
    return lambda: setattr(train_mod, "optimizer_step", real)


def test_paths():
    assert folder_for(Path("/x/y/runs.sqlite"), "abc") == Path("/x/y/runs.sqlite.checkpoints/abc")


def test_signals_wait_for_the_end_of_the_step_and_a_second_one_interrupts_at_once():
    before = signal.getsignal(signal.SIGTERM)
    # Python's own SIGINT handler, as in a terminal: a shell starts a background job (`pytest ... &`) with SIGINT
    # ignored, and an ignored SIGINT stays ignored (the next test)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with checkpoint.deferred_interrupts() as interrupted:
            assert not interrupted()
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupted()  # noted, not raised: the loop saves at the end of the step
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_sigint_stays_ignored(monkeypatch):
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started in the background by a script
    try:
        with checkpoint.deferred_interrupts() as interrupted:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not interrupted()
    finally:
        signal.signal(signal.SIGINT, old)


def test_system_exit_inside_training_is_stored_failed_not_done(tiny_bert, tmp_path, monkeypatch):
    """The run's status starts as "done": an exception that is not an ``Exception`` (SystemExit from a library)
    used to leave it so, storing a run that never finished as done with no scores."""
    real = train_mod.optimizer_step

    def exits(p, micro, at, *a, **kw):
        if at == 2:
            raise SystemExit(3)
        return real(p, micro, at, *a, **kw)

    monkeypatch.setattr(train_mod, "optimizer_step", exits)
    db = tmp_path / "runs.sqlite"
    with pytest.raises(SystemExit):
        run(_config(tiny_bert, "lora"), Store(db))
    (rec,) = Store(db).runs()
    assert rec["status"] == "failed" and rec["error"].startswith("SystemExit: 3")


@pytest.mark.parametrize("targets", ["qv", "all-linear"])
def test_galore_resume_is_bit_exact_with_a_restored_projector(targets, tiny_bert, tmp_path, monkeypatch):
    """Steps 5-8 of the resumed attempt project with the projector restored from the checkpoint of step 4. A
    wide weight (the FFN's down projection, m < n) is projected on the left, by ``U[:, :r]``, a strided view of the
    SVD: restored as a dense tensor, the same numbers went through another matmul path and drifted by ~1e-6."""
    models = []
    real_train = train_mod.train

    def keep(p, *a, **kw):
        models.append(p.model)
        return real_train(p, *a, **kw)

    monkeypatch.setattr(train_mod, "train", keep)
    cfg = _config(tiny_bert, "galore", targets=targets, lr=1e-2, method_args={"rank": 4})
    straight = run(cfg, Store(tmp_path / "a" / "runs.sqlite"))
    resumed, curves = _interrupted_then_resumed(monkeypatch, cfg, tmp_path / "b" / "runs.sqlite")
    assert resumed["details"]["resumed_from_step"] == 4 and resumed["scores"] == straight["scores"]
    a, b = dict(models[0].named_parameters()), dict(models[-1].named_parameters())
    trained = [n for n, q in a.items() if q.requires_grad]
    assert trained and all(torch.equal(a[n], b[n]) for n in trained), \
        {n: float((a[n] - b[n]).abs().max()) for n in trained if not torch.equal(a[n], b[n])}
    assert curves == Store(tmp_path / "a" / "runs.sqlite").curves(straight["run_key"])
