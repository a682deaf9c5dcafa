"""Issue 11, "Integrity": nothing finished is lost, and no store problem ends in a hang or a traceback.

Two runs of one key, Ctrl-C during ``--force``, a store write that fails, corrupt / foreign / old / newer /
read-only stores, a closed output pipe, output folders checked before the work. Runs are tiny (or faked where the
point is the store, not the training)."""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import efficientft
import efficientft.train as train_mod
from efficientft.cli import main
from efficientft.errors import StoreError
from efficientft.resolve import resolve, run_key
from efficientft.store import SCHEMA_VERSION, Store
from efficientft.sweep.runner import SweepOptions, state_of
from tests.conftest import tiny_config

SRC = Path(efficientft.__file__).resolve().parents[1]  # the code under test, for the subprocesses too

SCORES = {"dev/accuracy": 0.625}


def run_args(model, db, *extra):
    return ["run", "--model", str(model), "--task", "rte", "--steps", "2", "--max-train", "16", "--max-eval", "16",
            "--rank", "2", "--batch-size", "8", "--store", str(db), *extra]


def key_of(model, db):
    """The resolved config `eft run` builds from :func:`run_args`."""
    from efficientft.cli import build_parser, config_from_args

    return resolve(config_from_args(build_parser().parse_args(run_args(model, db))))


# ---------------------------------------------------------------------------------------------- ownership
def test_a_second_claimer_waits_and_a_taken_over_run_writes_nothing(store):
    other = Store(store.path)  # another run of the same key (a thread, or `eft run` beside a sweep)
    assert store.start("k", {"task": "rte"}) == 1
    with pytest.raises(StoreError, match=r"run k is being trained by .*:\d+ \(since .*\); it is stored when"):
        other.start("k", {"task": "rte"})
    assert other.claim("k", {}) == (False, "running")  # a sweep worker skips it too
    # `eft sweep --reclaim` takes it over; the first run, when it ends, must not overwrite the new owner's record
    assert other.claim("k", {"task": "rte"}, reclaim=True) == (True, "running")
    other.start("k", {"task": "rte"})
    store.add_curves("k", [("train", 1, "loss", 9.0)])  # dropped: not the owner any more
    other.add_curves("k", [("train", 1, "loss", 0.5)])
    other.finish("k", "done", {"dev/accuracy": 0.9}, main_score=0.9)
    with pytest.raises(StoreError, match=r"run k was taken over by .* this attempt's outcome was not stored \(done; "
                                         r"scores: dev/accuracy=0.6250\)"):
        store.finish("k", "done", SCORES, main_score=0.625)
    store.finish("k", "cancelled")  # a cancelled loser ends quietly, writing nothing either
    rec = other.get("k")
    assert rec["status"] == "done" and rec["scores"] == {"dev/accuracy": 0.9}
    assert other.curves("k") == [("train", 1, "loss", 0.5)]


def test_a_ray_driver_imports_a_record_only_under_its_claim(store):
    record = {"run_key": "r", "status": "done", "config": {"task": "rte", "seed": 1}, "scores": SCORES,
              "main_score": 0.625, "worker": "node:7", "tags": {"suite": "s"}}
    assert store.claim("r", record["config"], {"suite": "s"}) == (True, "new")
    store.import_run(record, [("train", 1, "loss", 0.5)])
    rec = store.get("r")
    assert rec["status"] == "done" and rec["scores"] == SCORES and rec["attempts"] == 1 and rec["worker"] == "node:7"
    assert store.curves("r") == [("train", 1, "loss", 0.5)] and store.owner("r") is None
    other = Store(store.path)
    assert store.claim("r2", {"task": "rte"})[0] and other.claim("r2", {"task": "rte"}, reclaim=True)[0]
    with pytest.raises(StoreError, match="run r2 was taken over by .*its record from the Ray worker was not stored"):
        store.import_run({**record, "run_key": "r2"})
    assert store.status("r2") == "running" and other.holds("r2")


def test_a_sweep_run_taken_over_is_skipped_not_failed(store, monkeypatch):
    from efficientft.sweep import executors

    def trained_while_reclaimed(cfg, st, **kw):
        st.start(run_key(cfg), cfg.to_dict())
        thief = Store(st.path)
        assert thief.claim(run_key(cfg), cfg.to_dict(), reclaim=True)[0]
        thief.start(run_key(cfg), cfg.to_dict())
        thief.finish(run_key(cfg), "done", {"dev/accuracy": 0.99}, main_score=0.99)
        st.finish(run_key(cfg), "done", SCORES, main_score=0.625)

    monkeypatch.setattr(train_mod, "run", trained_while_reclaimed)
    cfg = resolve(tiny_config("unused-model"))
    out = executors.execute_one({"key": run_key(cfg), "config": cfg.to_dict()}, str(store.path))
    assert out["status"] == "skipped" and out["reason"] == "taken over" and "was taken over by" in out["error"]
    assert store.get(run_key(cfg))["scores"] == {"dev/accuracy": 0.99}


def test_eft_run_refuses_a_key_another_live_run_trains(tiny_bert, tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    cfg = key_of(tiny_bert, db)
    owner = Store(db)
    owner.claim(run_key(cfg), cfg.to_dict())  # a sweep worker of this (live) process trains it
    assert main(run_args(tiny_bert, db)) == 2
    err = capsys.readouterr().err
    assert f"eft run: error: run {run_key(cfg)} is being trained by {socket.gethostname()}:{os.getpid()}" in err
    assert "Traceback" not in err
    assert owner.status(run_key(cfg)) == "running" and owner.holds(run_key(cfg))


def test_a_reclaimed_eft_run_keeps_the_new_owners_record_and_prints_its_scores(tiny_bert, tmp_path, capsys,
                                                                               monkeypatch):
    db = tmp_path / "s.sqlite"
    real_train = train_mod.train

    def train_while_reclaimed(p, store=None, key="", progress=True, *rest):
        out = real_train(p, store, key, progress, *rest)
        thief = Store(db)  # `eft sweep --reclaim` while this run trains
        assert thief.claim(key, p.cfg.to_dict(), reclaim=True)[0]
        thief.start(key, p.cfg.to_dict())
        thief.finish(key, "done", {"dev/accuracy": 0.99}, main_score=0.99)
        return out

    monkeypatch.setattr(train_mod, "train", train_while_reclaimed)
    assert main(run_args(tiny_bert, db)) == 2
    err = capsys.readouterr().err
    assert f"was taken over by {socket.gethostname()}:{os.getpid()} while this one trained" in err
    assert "outcome was not stored (done; scores: best_dev/accuracy=" in err and ", dev/accuracy=" in err
    (rec,) = Store(db).runs()
    assert rec["status"] == "done" and rec["scores"] == {"dev/accuracy": 0.99}


# ---------------------------------------------------------------------------------------------- --force
def test_ctrl_c_during_force_keeps_the_done_record_visible(tiny_bert, tmp_path, capsys, monkeypatch):
    db = tmp_path / "s.sqlite"
    assert main(run_args(tiny_bert, db, "--json")) == 0
    done = json.loads(capsys.readouterr().out)
    curves = Store(db).curves(done["run_key"])

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", interrupted)
    assert main(run_args(tiny_bert, db, "--force")) == 130
    capsys.readouterr()
    store = Store(db)
    rec = store.get(done["run_key"])
    assert rec["status"] == "done" and rec["scores"] == done["scores"] and rec["finished_at"] == done["finished_at"]
    assert store.curves(done["run_key"]) == curves
    assert [h["status"] for h in store.history(done["run_key"])] == ["cancelled"]  # the attempt is kept too
    assert main(["runs", "--store", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "done"
    assert main(["show", done["run_key"][:8], "--store", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "done"
    assert store.claim(done["run_key"], {}) == (False, "done")  # the next sweep skips it
    assert state_of(store.get(done["run_key"]), SweepOptions()) == "done"


# ---------------------------------------------------------------------------------------------- write failures
class FullAtCommit:
    """A connection whose COMMIT fails as on a full disk: SQLite rolls back by itself, then reports the error."""

    def __init__(self, db):
        object.__setattr__(self, "_db", db)

    def execute(self, sql, *args):
        if sql == "COMMIT":
            self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)

    def __setattr__(self, name, value):
        setattr(self._db, name, value)


def test_a_full_disk_at_commit_shows_the_real_error(store, monkeypatch):
    store.start("k", {"task": "rte"})
    real_open = Store._open
    monkeypatch.setattr(Store, "_open", lambda self: FullAtCommit(real_open(self)))
    with pytest.raises(StoreError) as e:
        store.finish("k", "done", SCORES, main_score=0.625)
    msg = str(e.value)
    assert "database or disk is full" in msg and "cannot rollback" not in msg
    assert "outcome was not stored (done; scores: dev/accuracy=0.6250)" in msg
    monkeypatch.undo()
    assert store.status("k") == "running"  # the disk took nothing: the row waits for its dead process's take-over


def test_a_store_write_failure_after_training_prints_the_scores(tiny_bert, tmp_path, capsys, monkeypatch):
    db = tmp_path / "s.sqlite"
    real = Store._write_outcome
    calls = []

    def full_once(self, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *a, **kw)

    monkeypatch.setattr(Store, "_write_outcome", full_once)
    assert main(run_args(tiny_bert, db)) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"eft run: error: results store {db}: OperationalError: database or disk is full")
    assert "outcome was not stored (done; scores: best_dev/accuracy=" in line and ", dev/accuracy=0." in line
    assert line.endswith("its row is marked failed.")
    assert "Traceback" not in err and "cannot rollback" not in err
    (rec,) = Store(db).runs()
    assert rec["status"] == "failed" and "dev/accuracy=" in rec["error"] and "disk is full" in rec["error"]
    assert Store(db).owner(rec["run_key"]) is None  # the claim is released: a sweep may run it again


# ---------------------------------------------------------------------------------------------- bad stores
def _old_store(path, rows):
    """The unversioned layout of the store before schema versions (as EfficientFT wrote it until this change)."""
    db = sqlite3.connect(path)
    db.executescript("""
CREATE TABLE runs (run_key TEXT PRIMARY KEY, status TEXT NOT NULL, task TEXT, method TEXT, targets TEXT,
    lr_ratio REAL, lr REAL, seed INTEGER, model TEXT, main_metric TEXT, main_score REAL, config TEXT NOT NULL,
    scores TEXT, cost TEXT, provenance TEXT, details TEXT, tags TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 1,
    worker TEXT, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT);
CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT NOT NULL, replaced_at TEXT NOT NULL,
    record TEXT NOT NULL);
CREATE TABLE curves (run_key TEXT NOT NULL, kind TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL,
    value REAL, PRIMARY KEY (run_key, kind, step, name));
CREATE INDEX runs_status ON runs (status);
CREATE TABLE sweeps (id INTEGER PRIMARY KEY AUTOINCREMENT, suite TEXT NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT, summary TEXT);
PRAGMA journal_mode=WAL;
""")
    for key, status, worker in rows:
        db.execute("INSERT INTO runs (run_key, status, config, scores, worker, created_at) VALUES (?,?,?,?,?,?)",
                   (key, status, '{"task": "rte"}', json.dumps(SCORES), worker, "2026-01-01T00:00:00+00:00"))
    db.commit()
    db.close()


def _version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def test_an_old_unversioned_store_is_read_as_is_and_migrated_when_written(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    here = socket.gethostname()
    _old_store(path, [("done1", "done", f"{here}:1"), ("dead", "running", f"{here}:999999999"),
                      ("live", "running", f"{here}:{os.getpid()}")])
    assert main(["runs", "--store", str(path), "--json"]) == 0  # read commands never migrate
    assert [json.loads(x)["run_key"] for x in capsys.readouterr().out.splitlines()] == ["dead", "done1", "live"]
    assert _version(path)[0] == 0 and "claims" not in _version(path)[1]
    store = Store(path)
    version, tables = _version(path)
    assert version == SCHEMA_VERSION and {"claims", "pending_curves"} <= tables
    assert store.get("done1")["scores"] == SCORES
    assert store.claim("done1", {}) == (False, "done")
    assert store.claim("live", {}) == (False, "running")  # an old version's live run keeps its key
    assert store.claim("dead", {"task": "rte"}) == (True, "running")  # a dead one is taken over, as before


@pytest.mark.parametrize("kind", ["text", "truncated", "foreign", "newer", "runs-table-of-another-app", "folder"])
@pytest.mark.parametrize("command", ["runs", "show", "report", "run"])
def test_a_bad_store_is_one_clear_line_and_exit_2(kind, command, tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    expected = {"text": "is not an EfficientFT results store (file is not a database)",
                "truncated": "is corrupt (database disk image is malformed)",
                "foreign": "is an SQLite database but not an EfficientFT results store (its tables: photos)",
                "newer": f"has schema version 99, newer than this EfficientFT reads (up to {SCHEMA_VERSION})",
                "runs-table-of-another-app": "has a runs table but not an EfficientFT one (no column",
                "folder": "is a folder; pass --store with a file path"}[kind]
    if kind == "text":
        path.write_text("hello, I am a text file\n" * 100)
    elif kind == "truncated":
        s = Store(path)
        for i in range(300):
            s.start(f"k{i}", {"task": "rte", "pad": "x" * 500})
        del s
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        for extra in ("-wal", "-shm"):
            (tmp_path / f"s.sqlite{extra}").unlink(missing_ok=True)
    elif kind in ("foreign", "runs-table-of-another-app"):
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE photos (id INTEGER)" if kind == "foreign" else "CREATE TABLE runs (id INTEGER)")
        db.commit()
        db.close()
    elif kind == "newer":
        Store(path)
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version=99")
        db.close()
    else:
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    args = {"runs": ["runs"], "show": ["show", "abc"], "report": ["report", "--out", str(tmp_path / "rep")],
            "run": ["run", "--task", "rte", "--steps", "1"]}[command]
    assert main([*args, "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"eft {command}: error: " in err and expected in err, err
    if before is not None:  # the file is left exactly as it was (no journal-mode switch, no tables added)
        assert path.read_bytes() == before


def test_reading_opens_read_only_and_writes_nothing(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_store(path, [("done1", "done", "h:1")])
    before = path.read_bytes()
    s = Store(path, readonly=True)
    assert s.get("done1")["scores"] == SCORES and s.runs("done")[0]["run_key"] == "done1"
    assert path.read_bytes() == before and _version(path) == (0, {"runs", "history", "curves", "sweeps",
                                                                  "sqlite_sequence"})
    with pytest.raises(StoreError, match="is read-only"):
        s.add_sweep("x", {})


RO_SCRIPT = """
set -e
mount --bind "$D" "$D" && mount -o remount,ro,bind "$D"
touch "$D/probe" 2>/dev/null && { echo "mount is not read-only"; exit 3; }
"$PY" -m efficientft runs --store "$D/s.sqlite" > "$O/runs.txt"
"$PY" -m efficientft show "$KEY" --store "$D/s.sqlite" > "$O/show.json"
"$PY" -m efficientft report --store "$D/s.sqlite" --out "$O/report" --no-plots --format md > /dev/null
set +e
"$PY" -m efficientft run --task rte --steps 1 --store "$D/s.sqlite" 2> "$O/run.err"
echo "run exit $?"
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private read-only mount")
def test_a_store_on_a_read_only_mount_can_be_read(tmp_path):
    d, o = tmp_path / "ro", tmp_path / "out"
    d.mkdir()
    o.mkdir()
    s = Store(d / "s.sqlite")
    s.start("abc123", {"task": "rte", "method": "lora", "seed": 0})
    s.finish("abc123", "done", SCORES, {"trainable_params": 10}, main_score=0.625)
    env = {**os.environ, "D": str(d), "O": str(o), "PY": sys.executable, "KEY": "abc",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", RO_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "run exit 2" in p.stdout, p.stdout + p.stderr
    assert "abc123" in (o / "runs.txt").read_text()
    assert json.loads((o / "show.json").read_text())["status"] == "done"
    assert (o / "report" / "report.md").is_file() or any((o / "report").iterdir())
    err = (o / "run.err").read_text()
    assert err.count("\n") == 1 and "is read-only" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------- pipes, outputs
def test_a_closed_pipe_ends_quietly(tmp_path):
    db = tmp_path / "s.sqlite"
    s = Store(db)
    for i in range(200):  # ~200 kB of JSON lines: more than a pipe holds
        s.start(f"k{i:03d}", {"task": "rte", "pad": "x" * 1000})
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "efficientft", "runs", "--json", "--store", str(db)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert json.loads(p.stdout.readline())["run_key"] == "k000"  # what `head -1` reads
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_output_folders_are_checked_before_any_work(where, tiny_bert, tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("not a folder")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "sub"
    expected = (f"{out} is a file, not a folder" if where == "file"
                else f"{out} cannot be created: {tmp_path / 'f'} is a file")
    monkeypatch.setattr(train_mod, "run", lambda *a, **kw: pytest.fail("trained before checking --export-dir"))
    db = tmp_path / "s.sqlite"
    assert main(run_args(tiny_bert, db, "--export-dir", str(out))) == 2
    err = capsys.readouterr().err
    assert f"eft run: error: --export-dir {expected}" in err and "Traceback" not in err
    Store(db).start("k", {"task": "rte"})
    assert main(["report", "--store", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"eft report: error: --out {expected}" in err and "Traceback" not in err


def test_show_takes_a_key_prefix_literally_and_runs_checks_the_status(store, capsys):
    store.start("abc123", {"task": "rte"})
    assert store.find("abc") is not None and store.find("a_c") is None and store.find("ABC") is None
    assert store.find("%") is None
    assert main(["runs", "--status", "finished", "--store", str(store.path)]) == 2
    assert capsys.readouterr().err.strip() == ("eft runs: error: unknown run status 'finished'; accepted: "
                                               "running, done, failed, diverged, cancelled.")
