"""Trackers: what a run logs to TensorBoard, MLflow and W&B (all offline) is what the store holds."""

import json
from pathlib import Path

import pytest

from efficientft import trackers
from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import resolve, run_key
from efficientft.store import Store
from efficientft.train import run
from tests.conftest import tiny_config


def _wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, out, buf = 7, [], b""  # after the file header
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # the rest of the block is padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_every_tracker_gets_the_run_key_config_curves_and_cost(tiny_bert, tmp_path, monkeypatch):
    for lib in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(lib)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "runs.sqlite"
    cfg = tiny_config(tiny_bert, steps=4, eval_every=2, batch_size=4, max_train=16, max_eval=8,
                      tracker=["tensorboard", "mlflow,wandb"])
    assert cfg.tracker == ["tensorboard", "mlflow", "wandb"]
    rec = run(cfg, Store(db))
    key = rec["run_key"]
    assert key == run_key(cfg.replace(tracker=[]))  # trackers are not part of the run's identity
    curves = Store(db).curves(key)
    loss = [(s, v) for k, s, n, v in curves if n == "loss"]
    dev = [(s, v) for k, s, n, v in curves if n == "dev/accuracy"]
    assert [s for s, _ in loss] == [1, 2, 3, 4] and [s for s, _ in dev] == [2, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard" / key))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-6))
                                                                         for s, v in loss]  # stored as float32
    assert [e.step for e in events.Scalars("dev/accuracy")] == [2, 4]
    assert {"train/lr", "train/grad_norm", "cost/trainable_params"} <= set(events.Tags()["scalars"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("efficientft").experiment_id])
    assert mrun.info.run_name == key and mrun.info.status == "FINISHED"
    assert mrun.data.params["method"] == "lora" and mrun.data.params["method_args.rank"] == "4"
    assert [(m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, "train.loss")] == loss
    assert mrun.data.metrics["cost.trainable_params"] == rec["cost"]["trainable_params"]

    (wfile,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(wfile)
    (wrun,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert wrun.display_name == key
    config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in wrun.config.update}
    assert config["method"] == "lora" and config["steps"] == 4
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h] == loss


def test_an_unknown_tracker_is_refused_with_exit_2(tiny_bert, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "2", "--tracker", "tensorbord",
                 "--store", str(tmp_path / "s.sqlite")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "eft run: error: tracker 'tensorbord' is not known. Did you mean 'tensorboard'? Accepted: tensorboard, "
        "mlflow, wandb (several allowed, comma-separated).")


def test_a_tracker_that_is_not_installed_is_refused_before_training(tiny_bert, tmp_path, monkeypatch, capsys):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    db = tmp_path / "s.sqlite"
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "2", "--tracker", "mlflow",
                 "--store", str(db)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "eft run: error: tracker 'mlflow' needs the mlflow package, which is not installed: "
        "pip install 'efficientft[mlflow]'.")
    assert not db.exists() or Store(db).runs() == []  # nothing was stored: refused before training


def test_tracker_names_in_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"tracker must be a list of names \(experiment trackers\), or one comma-separated text, got 3"):
        RunConfig(tracker=3)
    assert RunConfig(tracker=["wandb", "wandb", " mlflow"]).tracker == ["wandb", "mlflow"]


def test_a_tracker_that_cannot_start_is_one_line_and_nothing_is_stored(tiny_bert, tmp_path, monkeypatch, capsys):
    class NotLoggedIn:
        def __init__(self, *a):
            raise RuntimeError("api_key not configured (no-tty)\n  details of the client")

    monkeypatch.setitem(trackers._CLASSES, "tensorboard", NotLoggedIn)
    db = tmp_path / "s.sqlite"
    code = main(["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "2", "--tracker", "tensorboard",
                 "--store", str(db)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "eft run: error: tracker 'tensorboard' could not start: api_key not configured (no-tty)")
    assert Store(db).runs() == []


def test_a_resumed_run_continues_its_tensorboard_log_without_duplicate_steps(tiny_bert, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_checkpoint import _config, _interrupted_then_resumed

    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora", tracker=["tensorboard"])
    rec, curves = _interrupted_then_resumed(monkeypatch, cfg, db)  # killed in step 6, resumed from step 4
    events = EventAccumulator(str(tmp_path / "tensorboard" / rec["run_key"]))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(s, pytest.approx(v, rel=1e-6)) for _, s, n, v in curves if n == "loss"]  # steps 1..8, once


def test_a_resumed_run_continues_its_mlflow_run(tiny_bert, tmp_path, monkeypatch):
    """Killed at step 6, resumed from the step-4 checkpoint: one MLflow run (its id kept in the checkpoint's
    state.json), FINISHED, whose last value at every step is the stored curve's."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from tests.test_checkpoint import _config, _interrupted_then_resumed

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "runs.sqlite"
    cfg = _config(tiny_bert, "lora", tracker=["mlflow"])
    rec, curves = _interrupted_then_resumed(monkeypatch, cfg, db)
    assert rec["status"] == "done" and rec["details"]["resumed_from_step"] == 4
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("efficientft").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [(rec["run_key"], "FINISHED")]
    last = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "train.loss")}
    assert sorted(last.items()) == [(s, pytest.approx(v)) for _, s, n, v in curves if n == "loss"]  # steps 1..8
    assert runs[0].data.params["method"] == "lora"


def test_a_run_that_is_not_trained_opens_no_tracker_run(tiny_bert, tmp_path, monkeypatch, capsys):
    """A key a sweep finishes while `eft run` sets it up is not trained, and no MLflow run is left behind (was: an
    empty run, KILLED): trackers start after the store's claim."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    import efficientft.train as train_mod

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "runs.sqlite"
    cfg = tiny_config(tiny_bert, steps=2, tracker=["mlflow"])
    key, real_prepare = run_key(cfg), train_mod.prepare

    def prepare_while_a_sweep_finishes(*a, **kw):
        p = real_prepare(*a, **kw)
        sweep = Store(db)
        assert sweep.claim(key, resolve(cfg).to_dict())[0]
        sweep.finish(key, "done", {"dev/accuracy": 0.5}, main_score=0.5)
        return p

    monkeypatch.setattr(train_mod, "prepare", prepare_while_a_sweep_finishes)
    rec = run(cfg, Store(db))
    assert rec["scores"] == {"dev/accuracy": 0.5} and "was finished by" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("efficientft")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


def test_a_tracker_that_cannot_start_leaves_an_earlier_record_as_it_was(tiny_bert, tmp_path, monkeypatch, capsys):
    """The tracker starts after the claim; when it cannot, the claim is given back: the cancelled record, its
    attempts and its (empty) history are those before the try."""
    class NotLoggedIn:
        def __init__(self, *a):
            raise RuntimeError("api_key not configured (no-tty)")

    db = tmp_path / "s.sqlite"
    cfg = tiny_config(tiny_bert, steps=2)
    key = run_key(cfg)
    store = Store(db)
    assert store.claim(key, resolve(cfg).to_dict(), {"suite": "mine"})[0]
    store.finish(key, "cancelled", error="interrupted")
    before = Store(db).get(key)
    monkeypatch.setitem(trackers._CLASSES, "tensorboard", NotLoggedIn)
    with pytest.raises(ConfigError, match="tracker 'tensorboard' could not start"):
        run(tiny_config(tiny_bert, steps=2, tracker=["tensorboard"]), Store(db))
    assert Store(db).get(key) == before and Store(db).history(key) == [] and Store(db).owner(key) is None
