"""Suites and sweeps: expansion, validation with lines, skip-if-done, resume after a kill, the local pool,
claims, model selection and successive halving."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import run_key
from efficientft.store import Store, worker_alive
from efficientft.sweep import load_suite
from efficientft.sweep.runner import SweepOptions, environment, plan, sweep
from efficientft.sweep.selection import group_of, halving, select

ROOT = Path(__file__).resolve().parents[1]
TINY = "task: rte\n  steps: {steps}\n  batch_size: 8\n  max_train: 32\n  max_eval: 32\n  max_length: 48"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; on a busy machine more threads mostly wait for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def tiny_suite(tmp_path: Path, model: Path, body: str, steps: int = 4, name: str = "suite.yaml") -> Path:
    head = f"name: tiny\ndefaults:\n  model: {model}\n  {TINY.format(steps=steps)}\n"
    return write(tmp_path, head + body, name)


# ---------------------------------------------------------------------------------------------- expansion
def test_grid_expansion_with_per_method_overrides(tmp_path):
    p = write(tmp_path, """
name: grid
defaults: {task: rte, steps: 10, model: minilm}
grid:
  lr: [1.0e-3, 1.0e-4]
  seed: [0, 1]
per_task:
  rte: {batch_size: 8}
methods:
  - {method: full, targets: qkv}
  - {label: "LoRA QV", method: lora, targets: qv, lr: [5.0e-5], lr_ratio: [2, 4]}
  - {method: lora, targets: qkv, method_args: {rank: [2, 4]}, seed: 7}
  - {method: full, targets: qkv, lr: [1.0e-3, 1.0e-4]}
""")
    runs = load_suite(p).expand()
    by_entry = {}
    for r in runs:
        by_entry.setdefault(r.tags["entry"], []).append(r)
    # entry 0: the grid (2 lr × 2 seeds); entry 1: its own lr axis replaces the grid's (1 lr × 2 λ × 2 seeds);
    # entry 2: a fixed seed replaces the seed axis (2 lr × 2 ranks); entry 3 repeats entry 0: kept once
    assert {k: len(v) for k, v in by_entry.items()} == {0: 4, 1: 4, 2: 4}
    assert len({r.key for r in runs}) == 12
    assert {(r.cfg.lr, r.cfg.seed) for r in by_entry[0]} == {(1e-3, 0), (1e-3, 1), (1e-4, 0), (1e-4, 1)}
    assert {(r.cfg.lr, r.cfg.lr_ratio) for r in by_entry[1]} == {(5e-5, 2.0), (5e-5, 4.0)}
    assert {(r.cfg.method_args["rank"], r.cfg.seed) for r in by_entry[2]} == {(2, 7), (4, 7)}
    assert all(r.cfg.batch_size == 8 and r.cfg.steps == 10 for r in runs)  # per_task applies last
    # configs are resolved (method defaults explicit), tags name the suite and the grid cell
    assert by_entry[2][0].cfg.method_args == {"rank": 2, "alpha": None, "dropout": 0.0}
    assert by_entry[1][0].tags == {"suite": "grid", "label": "LoRA QV", "entry": 1,
                                   "cell": {"lr": 5e-5, "lr_ratio": 2.0, "seed": 0},
                                   "group": by_entry[1][0].tags["group"]}
    assert by_entry[0][0].tags["label"] == "full qkv"
    # a selection group gathers the runs that differ only in lr and seed
    groups = {r.tags["group"] for r in by_entry[1]}
    assert len(groups) == 2  # one per λ
    assert all(r.key == run_key(r.cfg) for r in runs)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("methods:\n  - {method: lora, lr_ration: 4}\n",
         r"line 2: methods\[0\]: unknown field 'lr_ration'. Did you mean 'lr_ratio'\?"),
        ("methods:\n  - {method: lora, rnak: 8}\n",
         r"line 2: methods\[0\]: unknown field 'rnak'. Did you mean the method argument 'rank'\? Method arguments "
         r"go under method_args \(method_args: \{rank: ...\}\)"),
        ("defaults:\n  sparse_rate: 0.02\nmethods:\n  - method: sift\n",
         r"line 2: defaults: unknown field 'sparse_rate'. 'sparse_rate' is a method argument: it goes under "
         r"method_args"),
        ("methods:\n  - method: lora\n  - method: lorra\n",
         r"line 3: unknown method 'lorra'. Did you mean 'lora'\?"),
        ("grid:\n  task: [rte, sst3]\nmethods:\n  - method: lora\n",
         r"line 2: unknown task 'sst3'. Did you mean 'sst2'\?"),
        ("methods:\n  - method: lora\n    targets: qv\n    lr: -1\n",
         r"line 4: lr must be a positive number, got -1"),
        ("methods:\n  - method: full\n    targets: qkv\n    method_args:\n      rank: 8\n",
         r"line 5: method 'full' takes no argument 'rank'"),
        ("defaults:\n  method_args: {rank: 0}\nmethods:\n  - method: lora\n",
         r"line 2: method 'lora': rank must be a positive integer, got 0"),
        ("grid:\n  lr: 0.001\nmethods:\n  - method: lora\n", r"line 2: grid: lr must be a list of values"),
        ("defaults:\n  seed: [0, 1]\nmethods:\n  - method: lora\n", r"line 2: defaults: seed is a list"),
        ("metods:\n  - method: lora\n", r"line 1: unknown suite key 'metods'. Did you mean 'methods'\?"),
        ("methods:\n  - method: lora\nmethods:\n  - method: full\n", r"line 3: key 'methods' appears twice"),
        ("methods:\n  - method: lora\n    steps: ten\n", r"line 3: methods\[0\]: steps must be an integer"),
        ("methods:\n  - method: lora\n    lr: [1.0e-3, 1.0e-3]\n", r"line 3: .*lr lists a value twice"),
        ("methods:\n  - method: lora\n    data_dir: /x\n", r"line 3: .*'data_dir' says where things are"),
        ("methods:\n  - {method: lora, steps: 10}\nearly_stopping: {rungs: [5]}\n",
         r"line 3: early_stopping ranks trials by their selection score; add a selection: block"),
        ("methods:\n  - {method: lora, steps: 10}\nselection: {over: [lr]}\nearly_stopping: {rungs: [5, 20]}\n",
         r"line 4: early_stopping rungs \[5, 20\] must stay below the full budget of 10 steps"),
        ("methods:\n  - {method: lora}\nselection: {select_by: dev/accuracy}\n",
         r"line 3: selection.select_by must be 'main' or a selection-split score .* \(never a dev score\)"),
        ("methods:\n  - {method: lora, lr: [1\n", r"line 3, column 1: not valid YAML"),
        ("methods:\n  - {method: lora, task: rte}\nper_task:\n  sst2: {steps: 3}\n",
         r"line 4: per_task names 'sst2', which no run of the suite trains on"),
    ],
)
def test_validation_errors_name_the_line(tmp_path, text, msg):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=msg) as e:
        load_suite(p).expand()
    assert str(p) in str(e.value)


def test_a_failed_rule_is_located_by_its_field_not_by_the_message_text(tmp_path):
    # method_args.lr also reads "lr" at the start of the message; the failed field is the grid's lr (line 4)
    p = write(tmp_path, "defaults:\n  method_args: {lr: 0.1}\ngrid:\n  lr: [-1]\nmethods:\n  - method: lora\n")
    with pytest.raises(ConfigError, match=r"s?\.yaml, line 4: lr must be a positive number, got -1") as e:
        load_suite(p).expand()
    assert "line 2" not in str(e.value)
    with pytest.raises(ConfigError) as rule:  # the field is set where the rule fails, through from_dict's wrap
        RunConfig.from_dict({"lr": -1}, where="run.yaml")
    assert rule.value.field == "lr" and str(rule.value) == "run.yaml: lr must be a positive number, got -1."


def test_all_errors_are_reported_together_before_anything_runs(tmp_path, capsys):
    p = write(tmp_path, "methods:\n  - {method: lorra}\n  - {method: lora, lr: 0}\n")
    store = tmp_path / "s.sqlite"
    assert main(["sweep", str(p), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "line 2: unknown method 'lorra'" in err and "line 3: lr must be a positive number" in err
    assert "Traceback" not in err
    assert not store.exists() or Store(store).runs() == []


# ---------------------------------------------------------------------------------------------- claims
def _claim_many(path: str, keys: list[str], out, finished) -> None:
    s = Store(path)
    out.put([k for k in keys if s.claim(k, {"task": "rte"})[0]])
    finished.wait(60)  # stay alive: a claim of a dead process may be taken over (that is resume)


def test_claim_is_atomic_across_processes(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Store(path)
    keys = [f"k{i}" for i in range(15)]
    ctx = mp.get_context("spawn")
    q, finished = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_many, args=(path, keys, q, finished)) for _ in range(3)]
    for p in procs:
        p.start()
    won = [q.get(timeout=60) for _ in procs]
    finished.set()
    for p in procs:
        p.join()
    claimed = [k for w in won for k in w]
    assert sorted(claimed) == sorted(keys)  # every key claimed exactly once, by one of the three processes


def test_claim_policy(store):
    here = socket.gethostname()
    store.claim("a", {"task": "rte"})
    assert store.claim("a", {}) == (True, "running")  # our own claim (same process) can be taken again
    store.start("a", {"task": "rte"})
    store.finish("a", "done")
    assert store.claim("a", {}) == (False, "done")
    for status in ("failed", "diverged"):
        store.start(status, {})
        store.finish(status, status)
        assert store.claim(status, {}) == (False, status)
        assert store.claim(status, {}, retry_failed=True) == (True, status)
        assert store.history(status)[0]["status"] == status  # the failed record is kept
    store.start("c", {})
    store.finish("c", "cancelled")
    assert store.claim("c", {}) == (True, "cancelled")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for worker, alive, ok in [(f"{here}:{sleeper.pid}", True, False), (f"{here}:999999999", False, True),
                                  ("elsewhere:1", None, False)]:
            store.start(worker, {})
            with store.transaction() as db:
                db.execute("UPDATE runs SET worker=? WHERE run_key=?", (worker, worker))
                db.execute("UPDATE claims SET worker=?, token='theirs' WHERE run_key=?", (worker, worker))
            assert worker_alive(worker) is alive
            assert store.claim(worker, {})[0] is ok
        assert store.claim("elsewhere:1", {}, reclaim=True) == (True, "running")
    finally:
        sleeper.kill()
        sleeper.wait()
    # attempts: the retry's claim counts one; the start that follows in the same process does not count again
    assert store.get("failed")["attempts"] == 2
    assert store.start("failed", {}) == 2
    assert store.get("a")["attempts"] == 1


# ---------------------------------------------------------------------------------------------- sweeps
def test_skip_if_done_and_failures_do_not_stop_the_sweep(tmp_path, tiny_bert, capsys):
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1]}
methods:
  - {method: lora, targets: qv, lr_ratio: 4, method_args: {rank: 4}}
  - {method: lora, targets: qv, method_args: {rank: 40}}
""")
    db = str(tmp_path / "s.sqlite")
    # rank 40 is larger than the tiny model allows: found when the model loads, stored failed, the sweep goes on
    assert main(["sweep", str(p), "--store", db]) == 1
    out = capsys.readouterr().out
    assert out.count("] done") == 2 and out.count("] failed") == 2 and "rank 40 is larger than" in out
    store = Store(db)
    done = {r["run_key"]: r for r in store.runs("done")}
    assert len(done) == 2 and all(r["tags"]["suite"] == "tiny" for r in done.values())
    assert [r["status"] for r in store.runs("failed")] == ["failed", "failed"]
    # again: nothing trains; failed runs are kept as results (policy) unless --retry-failed
    assert main(["sweep", str(p), "--store", db]) == 0
    out = capsys.readouterr().out
    assert out.count("] skipped (done)") == 2 and out.count("] skipped (failed)") == 2
    assert {k: r["finished_at"] for k, r in done.items()} == {r["run_key"]: r["finished_at"]
                                                              for r in store.runs("done")}
    assert all(r["attempts"] == 1 for r in store.runs())
    assert main(["sweep", str(p), "--store", db, "--retry-failed"]) == 1
    assert capsys.readouterr().out.count("] failed") == 2
    sweeps = store.sweeps("tiny")
    assert len(sweeps) == 3 and sweeps[1]["summary"]["outcomes"] == {"skipped (done)": 2, "skipped (failed)": 2}


def test_dry_run_lists_runs_and_cost(tmp_path, tiny_bert, capsys, glue_dir):
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1, 2]}
methods:
  - {method: lora, targets: qv, lr: [1.0e-3, 1.0e-2]}
  - {method: full, targets: qkv, steps: null, epochs: 2}
estimate: {step_s: 0.5, overhead_s: 3}
""")
    db = tmp_path / "s.sqlite"
    assert main(["sweep", str(p), "--dry-run", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    # 6 LoRA runs of 4 steps; 3 full runs of 2 epochs over 32 examples in batches of 8 = 8 steps each
    assert "suite tiny: 9 runs (9 new); 9 to run." in out
    assert "estimated cost: 48 optimizer steps; 51 s in one process (timings from: suite estimate)" in out
    assert not db.exists()  # a plan only reads: no store is created for it
    # an existing store is only read: a read-only file is planned against, and left byte for byte as it was
    Store(db)  # created empty, as `eft run` would
    before = db.read_bytes()
    db.chmod(0o444)
    try:
        assert main(["sweep", str(p), "--dry-run", "--store", str(db)]) == 0
        assert "suite tiny: 9 runs (9 new); 9 to run." in capsys.readouterr().out
    finally:
        db.chmod(0o644)
    assert db.read_bytes() == before and Store(db).runs() == []  # nothing ran


def _statuses(db: Path) -> dict[str, dict]:
    return {r["run_key"]: r for r in Store(db).runs()} if db.exists() else {}


def test_resume_after_sigkill(tmp_path, tiny_bert, capsys):
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1, 2]}
methods:
  - {method: lora, targets: qv, method_args: {rank: 4}, lr: [1.0e-3, 1.0e-2]}
""", steps=25)
    db = tmp_path / "s.sqlite"
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-m", "efficientft.cli", "sweep", str(p), "--store", str(db)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            rows = _statuses(db)
            st = [r["status"] for r in rows.values()]
            if st.count("done") >= 2 and "running" in st:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("the sweep did not get going in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep dies at once, mid-run
        proc.wait()
    before = _statuses(db)
    done_before = {k: r["finished_at"] for k, r in before.items() if r["status"] == "done"}
    interrupted = [k for k, r in before.items() if r["status"] == "running"]
    assert len(done_before) >= 2 and len(done_before) + len(interrupted) < 6
    assert all(before[k]["worker"] == f"{socket.gethostname()}:{proc.pid}" for k in interrupted)

    assert main(["sweep", str(p), "--store", str(db)]) == 0
    out = capsys.readouterr().out
    after = _statuses(db)
    assert len(after) == 6 and all(r["status"] == "done" for r in after.values())
    assert out.count("] skipped (done)") == len(done_before)
    for k, finished in done_before.items():  # finished work is not repeated
        assert after[k]["attempts"] == 1 and after[k]["finished_at"] == finished and Store(db).history(k) == []
    for k in interrupted:  # the run the kill interrupted trained again, from scratch
        assert after[k]["attempts"] == 2 and after[k]["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert sum(r["attempts"] for r in after.values()) == 6 + len(interrupted)


def test_local_pool_of_two_workers_matches_in_process(tmp_path, tiny_bert, capsys):
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1]}
methods:
  - {method: lora, targets: qv, lr_ratio: 4, method_args: {rank: 4}, lr: [1.0e-3, 1.0e-2]}
""", steps=6)
    a, b = tmp_path / "one.sqlite", tmp_path / "pool.sqlite"
    assert main(["sweep", str(p), "--store", str(a)]) == 0
    assert main(["sweep", str(p), "--store", str(b), "--workers", "2"]) == 0
    capsys.readouterr()
    one, pool = _statuses(a), _statuses(b)
    assert set(one) == set(pool) and len(pool) == 4
    workers = {r["worker"] for r in pool.values()}
    assert len(workers) == 2 and f"{socket.gethostname()}:{os.getpid()}" not in workers
    for k in one:
        assert pool[k]["status"] == "done" and pool[k]["attempts"] == 1
        assert pool[k]["scores"] == pytest.approx(one[k]["scores"])
        la = [v for _, _, n, v in Store(a).curves(k) if n == "loss"]
        lb = [v for _, _, n, v in Store(b).curves(k) if n == "loss"]
        assert len(lb) == 6 and lb == pytest.approx(la, rel=1e-4)


def test_fresh_process_runs_each_run_in_a_process_of_its_own(tmp_path, tiny_bert, capsys):
    """--fresh-process: one run per process, --workers 1 included (never this process), scores unchanged."""
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1, 2]}
methods:
  - {method: lora, targets: qv, method_args: {rank: 4}, lr: [1.0e-3]}
""", steps=4)
    a, b = tmp_path / "one.sqlite", tmp_path / "fresh.sqlite"
    assert main(["sweep", str(p), "--store", str(a)]) == 0
    assert main(["sweep", str(p), "--store", str(b), "--fresh-process"]) == 0
    capsys.readouterr()
    one, fresh = _statuses(a), _statuses(b)
    workers = [r["worker"] for r in fresh.values()]
    assert len(set(workers)) == 3 and f"{socket.gethostname()}:{os.getpid()}" not in workers
    assert {r["worker"] for r in one.values()} == {f"{socket.gethostname()}:{os.getpid()}"}
    for k in one:
        assert fresh[k]["status"] == "done" and fresh[k]["scores"] == pytest.approx(one[k]["scores"])


CRASH_HOOK = """
import os
from pathlib import Path

import efficientft.sweep.executors as ex

_execute_one = ex.execute_one


def execute_one(item, *args, **kwargs):  # the worker's run of seed 1 kills its process, after claiming the run
    import efficientft.train as t

    run = t.run

    def crashing(cfg, *a, **kw):
        marker = Path(os.environ["EFT_TEST_CRASH_MARKER"])
        if cfg.seed == 1 and (os.environ["EFT_TEST_CRASH"] == "always" or not marker.exists()):
            marker.touch()
            os._exit(9)  # as the kernel's OOM killer would end it: no exception, no cleanup
        return run(cfg, *a, **kw)

    t.run = crashing
    return _execute_one(item, *args, **kwargs)


ex.execute_one = execute_one
"""


@pytest.mark.parametrize("crash", ["once", "always"])
def test_a_dead_worker_costs_only_its_run(crash, tmp_path, tiny_bert, capsys, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)  # imported by the spawned workers only
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EFT_TEST_CRASH", crash)
    monkeypatch.setenv("EFT_TEST_CRASH_MARKER", str(tmp_path / "crashed"))
    p = tiny_suite(tmp_path, tiny_bert, """
grid: {seed: [0, 1, 2, 3]}
methods:
  - {method: lora, targets: qv, method_args: {rank: 4}, lr: 1.0e-3}
""", steps=25)
    db = tmp_path / "s.sqlite"
    rc = main(["sweep", str(p), "--store", str(db), "--workers", "2"])
    out, err = capsys.readouterr()
    assert "a worker process died" in err
    rows = {r["config"]["seed"]: r for r in Store(db).runs()}
    assert sorted(rows) == [0, 1, 2, 3]
    for seed in (0, 2, 3):  # the neighbours finish, whether or not the crash interrupted them
        assert rows[seed]["status"] == "done", rows[seed]["error"]
    if crash == "once":  # a worker killed once (by hand, say): its run trains again and the sweep succeeds
        assert rc == 0 and rows[1]["status"] == "done" and rows[1]["attempts"] == 2
    else:  # a run that kills every worker it runs on is failed, named, and the sweep says so
        assert rc == 1 and rows[1]["status"] == "failed" and rows[1]["attempts"] == 2
        assert "its worker process died twice, the second time running alone" in rows[1]["error"]
        assert "1 failed" in out


# ---------------------------------------------------------------------------------------------- selection
def _rec(lr, seed, sel, dev, best=None, targets="qv", status="done", key=None):
    return {"run_key": key or f"{targets}-{lr}-{seed}", "status": status, "main_metric": "dev/accuracy",
            "tags": {"label": f"LoRA {targets}"},
            "config": {"task": "rte", "method": "lora", "targets": targets, "lr": lr, "seed": seed,
                       "lr_ratio": 1.0, "method_args": {"rank": 8}, "data_dir": f"/d{seed}"},
            "scores": {"selection/accuracy": sel, "dev/accuracy": dev, "best_dev/accuracy": best or dev}}


def test_selection_chooses_on_the_selection_split_and_labels_the_convention():
    recs = [
        # lr 1e-3: best on the selection split; lr 1e-2: best on dev (what "best dev" would pick)
        _rec(1e-3, 0, 0.80, 0.70), _rec(1e-3, 1, 0.78, 0.72), _rec(1e-3, 2, 0.79, 0.74),
        _rec(1e-2, 0, 0.70, 0.80, 0.85), _rec(1e-2, 1, 0.72, 0.78, 0.83), _rec(1e-2, 2, 0.60, 0.76, 0.84),
        _rec(1e-4, 0, 0.99, 0.99, status="failed"),  # not done: ignored
        _rec(1e-3, 0, 0.5, 0.5, targets="qkv"),  # another method configuration
    ]
    rows = {r["targets"]: r for r in select(recs, by="main", over=["lr"])}
    qv = rows["qv"]
    assert qv["chosen"] == {"lr": 1e-3} and qv["convention"] == "selection"
    assert qv["selected_by"] == "selection/accuracy" and qv["reported"] == "dev/accuracy"
    assert qv["mean"] == pytest.approx(0.72) and qv["std"] == pytest.approx(0.02) and qv["n"] == 3
    assert qv["ci95"] == pytest.approx(4.302653 * 0.02 / 3**0.5, rel=1e-5)
    assert qv["select_score"] == pytest.approx(0.79) and qv["seeds"] == [0, 1, 2]
    assert [c["values"]["lr"] for c in qv["candidates"]] == [0.001, 0.01]
    assert rows["qkv"]["n"] == 1 and rows["qkv"]["std"] == 0.0 and rows["qkv"]["ci95"] is None
    best = {r["targets"]: r for r in select(recs, over=["lr"], convention="best_dev")}["qv"]
    assert best["chosen"] == {"lr": 1e-2} and best["mean"] == pytest.approx(0.84)
    assert "optimistic" in best["convention_text"] and best["reported"] == "best_dev/accuracy"
    # without selection scores the fair convention says so instead of peeking at dev
    no_sel = [{**r, "scores": {"dev/accuracy": 0.5}} for r in recs[:3]]
    row = select(no_sel)[0]
    assert row["chosen"] is None and "no selection/accuracy scores" in row["note"]
    # environment fields and the seed do not split a group; the selected field does not either
    assert group_of(recs[0]["config"], ["lr"]) == group_of(recs[4]["config"], ["lr"])
    assert group_of(recs[0]["config"], ["lr"]) != group_of(recs[7]["config"], ["lr"])
    assert group_of(recs[0]["config"], []) != group_of(recs[3]["config"], [])


def test_halving_rule():
    assert halving({"a": 0.5, "b": 0.9, "c": 0.7}, 3, "selection/accuracy") == ["b"]
    assert halving({"a": 0.5, "b": 0.9, "c": 0.7, "d": None, "e": 0.8, "f": 0.1}, 2, "selection/accuracy") == ["b", "e", "c"]
    assert halving({"a": None, "b": None}, 2, "selection/accuracy") == ["a"]  # nothing scored: keep the first
    assert halving({"a": 0.7, "b": 0.7}, 2, "selection/accuracy") == ["a"]  # ties: the earlier candidate


def test_successive_halving_counts_compute_and_compares_with_the_full_grid(tmp_path, tiny_bert, glue_dir):
    p = tiny_suite(tmp_path, tiny_bert, """
methods:
  - {method: lora, targets: qv, method_args: {rank: 4}, lr: [1.0e-4, 1.0e-3, 1.0e-2]}
selection: {selection_size: 16, over: [lr]}
early_stopping: {rungs: [2], reduction_factor: 3}
""", steps=6)
    suite, store = load_suite(p), Store(tmp_path / "s.sqlite")
    opts = SweepOptions(env=environment())
    assert plan(suite, store, opts)["early_stopping"] == {"steps_early_stopping": 3 * 2 + 6,
                                                          "steps_full_grid": 3 * 6}
    lines: list[str] = []
    s = sweep(suite, store, opts, log=lines.append)
    es = s["early_stopping"]
    assert es["steps_early_stopping"] == 12 and es["steps_full_grid"] == 18
    assert es["steps_saved_fraction"] == pytest.approx(1 / 3)
    rung = next(iter(es["groups"].values()))[0]
    assert rung["budget"] == 2 and len(rung["scores"]) == 3 and len(rung["kept"]) == 1
    assert es["same_choice_as_full_grid"] is None  # the full grid was not run
    runs = store.runs("done")
    assert sorted(r["config"]["steps"] for r in runs) == [2, 2, 2, 6]
    assert sorted(r["tags"].get("rung", -1) for r in runs) == [-1, 0, 0, 0]
    # the full grid as well (its survivor's run is already done), then halving again: now it is measured
    full = sweep(suite, store, SweepOptions(env=environment(), early_stopping=False), log=lines.append)
    assert full["outcomes"] == {"done": 2, "skipped (done)": 1}
    again = sweep(suite, store, opts, log=lines.append)["early_stopping"]
    assert again["chosen"] == es["chosen"] and len(again["same_choice_as_full_grid"]) == 1
    group = next(iter(again["chosen"]))
    chosen_full = select([r for r in store.runs("done") if r["config"]["steps"] == 6], over=["lr"])[0]["chosen"]
    assert again["same_choice_as_full_grid"][group] == (chosen_full == es["chosen"][group])
    assert again["chosen_full_grid"][group] == chosen_full


# ---------------------------------------------------------------------------------------------- data parallel
def test_data_parallel_on_two_cpu_processes_equals_one_process(tmp_path, tiny_bert_no_dropout, glue_dir):
    """torchrun (gloo) with 2 processes: each trains on half of every batch, DDP averages the gradients, so
    the loss curve is the single-process curve; one record, under the single-process key."""
    args = ["run", "--task", "rte", "--method", "lora", "--targets", "qv", "--lr-ratio", "4", "--rank", "4",
            "--steps", "6", "--max-train", "64", "--max-eval", "32", "--max-length", "48", "--batch-size", "8",
            "--lr", "1e-2", "--model", str(tiny_bert_no_dropout), "--no-progress", "--device", "cpu"]
    env = subprocess_env()
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    assert main([*args, "--store", str(one)]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000), "-m", "efficientft.cli", *args, "--store", str(two)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = Store(one).runs(), Store(two).runs()
    assert len(b) == 1 and b[0]["run_key"] == a[0]["run_key"] and b[0]["status"] == "done"
    assert b[0]["cost"]["processes"] == 2 and a[0]["cost"]["processes"] == 1
    la = [v for _, _, n, v in Store(one).curves(a[0]["run_key"]) if n == "loss"]
    lb = [v for _, _, n, v in Store(two).curves(b[0]["run_key"]) if n == "loss"]
    assert len(lb) == 6 and lb == pytest.approx(la, rel=1e-5)
    assert b[0]["scores"]["dev/accuracy"] == a[0]["scores"]["dev/accuracy"]


def test_missing_inputs_fail_the_sweep_before_any_run(tmp_path, tiny_bert, capsys):
    """A task whose files are missing stops the sweep in seconds, before the runs that could train."""
    from efficientft.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndefaults: {{model: {tiny_bert}, steps: 1, max_train: 8, max_eval: 8}}\n"
                     f"grid: {{task: [rte, mnli], seed: [0]}}\nmethods:\n  - {{method: lora, method_args: {{rank: 2}}}}\n")
    db = tmp_path / "runs.sqlite"
    assert main(["sweep", str(suite), "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert "inputs missing, nothing was run" in err and "MNLI/train.tsv is missing" in err
    assert not db.exists() or Store(db).runs() == []


def test_dry_run_times_a_run_from_like_runs_of_its_own_task(tmp_path):
    """A step costs its tokens: RTE's measured seconds must not time CoLA's runs (they were 5× too slow), and the
    suite's estimate may give seconds per task. Per step is the training time over the steps (the median step
    leaves out the slow ones)."""
    p = write(tmp_path, """
name: timing
defaults: {model: minilm, steps: 10, batch_size: 16}
grid: {task: [rte, cola, mrpc]}
methods: [{method: lora, targets: qv}]
estimate: {step_s: {mrpc: 0.5}, overhead_s: 2}
""")
    suite = load_suite(p)
    store = Store(tmp_path / "s.sqlite")
    rte = next(r for r in suite.expand() if r.cfg.task == "rte")
    cfg = {**rte.cfg.to_dict(), "seed": 99}  # a like run of RTE (another seed), already done
    store.start("pilot", cfg, {}, {}, "dev/accuracy")
    store.finish("pilot", "done", {"dev/accuracy": 0.5},
                 {"median_step_s": 0.8, "train_s": 200.0, "total_steps": 200, "wall_s": 230.0})
    rows = {x["run"].cfg.task: x for x in plan(suite, store, SweepOptions())["runs"]}
    assert rows["rte"]["basis"] == "store (1 like runs)" and rows["rte"]["est_s"] == pytest.approx(10 * 1.0 + 30)
    assert rows["mrpc"]["basis"] == "suite estimate" and rows["mrpc"]["est_s"] == pytest.approx(10 * 0.5 + 2)
    assert rows["cola"]["basis"] == "unknown" and rows["cola"]["est_s"] is None
    bad = write(tmp_path, "name: t\ndefaults: {model: minilm, task: rte}\nmethods: [{method: full}]\n"
                          "estimate: {step_s: {rte: fast}}\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"estimate.step_s must be a number of seconds >= 0 .*got 'fast'"):
        load_suite(bad)


class _BusyPool:
    """Stands in for the ProcessPoolExecutor: its worker processes (started through the pool's context) are busy
    with a 120 s "run"."""

    def __init__(self):
        self.shut = None

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut = (wait, cancel_futures)


def test_an_aborted_pool_stops_its_workers_instead_of_waiting_for_their_runs():
    """Ctrl-C or SIGTERM sent to the sweep's process alone (``kill PID``, a scheduler; a background job's workers
    ignore SIGINT) used to print "cancelled" and then wait for every worker's whole run at exit: on abort, each live
    worker is sent SIGTERM (its run then checkpoints at the end of its step), queued runs are dropped, nothing waits."""
    from efficientft.sweep.executors import LocalPool

    pool = LocalPool("unused.sqlite", 2)
    procs = [pool._spawn.Process(target=time.sleep, args=(120,)) for _ in range(2)]
    for p in procs:
        p.start()
    pool._pool = fake = _BusyPool()
    start = time.time()
    try:
        pool.close(abort=True)
        for p in procs:
            p.join(30)
        assert fake.shut == (False, True) and pool._pool is None
        assert [p.exitcode for p in procs] == [-signal.SIGTERM] * 2 and time.time() - start < 30
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_a_pool_worker_whose_run_was_cancelled_exits_instead_of_taking_the_next_run(monkeypatch):
    """Seen on a real sweep: after a cancel, each worker's run was stored cancelled and the workers went on with the
    next queued runs (a ProcessPoolExecutor worker catches the KeyboardInterrupt like any exception)."""
    import efficientft.sweep.executors as ex

    def cancelled(*a, **k):
        raise KeyboardInterrupt

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(ex, "execute_one", cancelled)
    monkeypatch.setattr(ex.os, "_exit", exit_)
    with pytest.raises(SystemExit) as e:
        ex._pool_execute({"key": "k"}, "unused.sqlite")
    assert e.value.code == 128 + signal.SIGTERM
    monkeypatch.setattr(ex, "execute_one", lambda *a, **k: {"status": "done"})
    assert ex._pool_execute({"key": "k"}, "unused.sqlite") == {"status": "done"}


def test_a_resumed_run_counts_only_the_steps_this_sweep_trained(tmp_path, tiny_bert, capsys, monkeypatch):
    """Steps 1-4 were trained by the attempt that saved the checkpoint; the sweep that resumes it trains 5-8. Its
    summary used to say 8 (the run's total), so summed over sweeps the first four steps counted twice."""
    import efficientft.train as train_mod

    p = tiny_suite(tmp_path, tiny_bert, """
methods:
  - {method: lora, targets: qv, method_args: {rank: 4}, checkpoint_every: 2}
""", steps=8)
    db = tmp_path / "s.sqlite"
    real = train_mod.optimizer_step

    def dying(prepared, micro, at, *a, **kw):
        if at == 6:
            raise RuntimeError("killed at step 6")
        return real(prepared, micro, at, *a, **kw)

    monkeypatch.setattr(train_mod, "optimizer_step", dying)
    assert main(["sweep", str(p), "--store", str(db), "--json"]) == 1
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    monkeypatch.setattr(train_mod, "optimizer_step", real)
    assert main(["sweep", str(p), "--store", str(db), "--retry-failed", "--json"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (rec,) = Store(db).runs("done")
    assert rec["details"]["resumed_from_step"] == 4 and rec["cost"]["total_steps"] == 8
    assert first["outcomes"] == {"failed": 1} and second["steps_trained"] == 4
