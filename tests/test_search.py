"""Equal-budget tuning on Optuna (issue 25 §2): a suite's ``search:`` block — the shipped example runs, trials are
tagged and seeded, a SIGKILLed search resumes without losing a finished trial, a bad space is one line and exit 2
before any training, and the final re-runs are reported on dev while the choice reads only the selection split."""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from efficientft.errors import ConfigError  # noqa: E402
from efficientft.methods import METHODS  # noqa: E402
from efficientft.store import Store  # noqa: E402
from efficientft.sweep.options import SweepOptions, environment  # noqa: E402
from efficientft.sweep.runner import sweep  # noqa: E402
from efficientft.sweep.search import rungs_of, storage_path  # noqa: E402
from efficientft.sweep.suite import load_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = "task: rte\n  max_length: 32\n  batch_size: 8\n  max_train: 48\n  max_eval: 16\n  steps: {steps}"


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def suite_file(tmp_path: Path, model: Path, search: str, methods: str | None = None, steps: int = 9) -> Path:
    methods = methods or "  - {label: LoRA, method: lora, targets: qv, method_args: {rank: 4}}\n"
    p = tmp_path / "search.yaml"
    p.write_text(f"name: s\ndefaults:\n  model: {model}\n  {TINY.format(steps=steps)}\nmethods:\n{methods}"
                 f"selection: {{selection_size: 16}}\nsearch: {search}\n")
    return p


def sweep_command(suite: Path, store: Path, glue_dir, *flags: str) -> tuple[list[str], dict[str, str]]:
    """`eft sweep SUITE --store STORE FLAGS` as a subprocess's command and environment (one thread, this checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EFT_DATA_DIR": str(glue_dir),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return [sys.executable, "-m", "efficientft.cli", "sweep", str(suite), "--store", str(store), *flags], env


def signal_when(cmd: list[str], env: dict[str, str], store: Path, sig: int, ready) -> subprocess.Popen:
    """Start the sweep; send it ``sig`` as soon as ``ready(trials)`` holds of its Optuna trials (polled); give up
    after 240 s (the caller's assertions then say it ended first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            trials = trials_of(store)
        except sqlite3.Error:
            continue
        if ready(trials):
            os.kill(proc.pid, sig)
            break
    return proc


def trials_of(store_path: Path) -> list[tuple]:
    """(study, number, state, params, value) of every trial in the search's Optuna storage, read with sqlite3."""
    db = sqlite3.connect(storage_path(Store(store_path)))
    rows = db.execute("SELECT s.study_name, t.number, t.state, t.trial_id FROM trials t JOIN studies s "
                      "ON s.study_id = t.study_id ORDER BY s.study_name, t.number").fetchall()
    out = []
    for study, number, state, tid in rows:
        params = dict(db.execute("SELECT param_name, param_value FROM trial_params WHERE trial_id = ? ORDER BY "
                                 "param_name", (tid,)).fetchall())
        value = db.execute("SELECT value FROM trial_values WHERE trial_id = ?", (tid,)).fetchone()
        out.append((study, number, state, params, value[0] if value else None))
    db.close()
    return out


def test_rungs_are_optunas_successive_halving_rungs():
    search = load_suite("search-check").search
    assert rungs_of(search, 12, "rte") == [4]
    assert rungs_of(search, 40, "rte") == [4, 12, 36]


def test_default_rungs_are_budget_over_eta_squared_and_over_eta_with_nothing_just_below_the_budget():
    from efficientft.sweep.suite_parse import Search

    assert rungs_of(Search(), 1000, "sst2") == [112, 336]  # floor division gave 111, 333 and 999: a rung as dear as the run
    assert rungs_of(Search(), 600, "mrpc") == [67, 201] and rungs_of(Search(), 300, "sst2") == [34, 102]
    assert all(len(rungs_of(Search(), n, "sst2")) == 2 and rungs_of(Search(), n, "sst2")[-1] < n / 2
               for n in range(9, 3000, 7))


def test_the_first_rung_may_be_given_per_task_and_names_only_the_suites_tasks(tmp_path):
    """MRPC sits at its majority class for ~100 steps (pilot.md): its first rung at 600/9 = 67 steps would rank
    trials by noise, so a suite gives it a later one; the other tasks keep the default."""
    from efficientft.sweep.suite_parse import Search

    se = Search(min_steps={"mrpc": 200})
    assert rungs_of(se, 600, "mrpc") == [200] and rungs_of(se, 300, "sst2") == [34, 102]
    assert rungs_of(Search(min_steps=50), 500, "stsb") == [50, 150, 450]
    head = "defaults: {steps: 12, lr: 0.001}\ngrid: {task: [rte, mrpc]}\nmethods:\n  - {method: lora}\n" \
           "selection: {selection_size: 0.1}\n"
    p = tmp_path / "s.yaml"
    p.write_text(head + "search: {trials: 2, min_steps: {mrpc: 6}}\n")
    suite = load_suite(p)
    assert suite.search.min_steps == {"mrpc": 6} and suite.expand()
    p.write_text(head + "search: {trials: 2, min_steps: {sst2: 6}}\n")
    with pytest.raises(ConfigError, match="search.min_steps names task 'sst2', which the suite does not run "
                                          r"\(its tasks: mrpc, rte\)"):
        load_suite(p).expand()
    p.write_text(head + "search: {trials: 2, min_steps: {mrpc: 0}}\n")
    with pytest.raises(ConfigError, match="search.min_steps.mrpc must be a whole number >= 1"):
        load_suite(p)


def test_a_dry_run_sizes_a_search_in_cpu_hours_from_the_suite_estimate(glue_dir, tmp_path):
    from efficientft.api import plan_suite, plan_text

    suite = load_suite("paper-claims")
    plan = plan_suite(suite, tmp_path / "none.sqlite")
    se, est = plan["search"], suite.estimate
    groups = {r["run"].tags["group"]: r["run"].cfg for r in plan["runs"]}
    assert se["configurations"] == len(groups) == 15 and se["unknown_time"] == 0  # 5 configurations x 3 tasks
    final = sum(5 * (c.steps * est["step_s"][c.task] + est["overhead_s"]) for c in groups.values())
    assert se["seconds_final"] == pytest.approx(final)
    budgets = {c.task: [*rungs_of(suite.search, c.steps, c.task), c.steps] for c in groups.values()}
    at_most = sum(8 * (sum(budgets[c.task]) * est["step_s"][c.task] + len(budgets[c.task]) * est["overhead_s"])
                  for c in groups.values())
    assert se["seconds_trials_at_most"] == pytest.approx(at_most)
    assert se["seconds_trials_expected"] < at_most / 2
    assert "CPU-hours" in plan_text(suite, plan).splitlines()[-1]


def test_the_shipped_search_runs_tags_its_trials_and_reports_the_choice_on_dev(tmp_path, tiny_bert, glue_dir):
    suite = load_suite("search-check")
    store = Store(tmp_path / "runs.sqlite")
    lines: list[str] = []
    s = sweep(suite, store, SweepOptions(env=environment(model=str(tiny_bert))), log=lines.append)["search"]
    configs = s["configurations"]
    assert len(configs) == 6 and {(c["method"], c["task"]) for c in configs} == \
        {(m, t) for m in ("full", "lora", "bitfit") for t in ("rte", "mrpc")}
    runs = store.runs()
    for c in configs:  # the same number of trials for every method, each a stored, tagged run per rung
        assert sum(c["trials"].values()) == 3
        trial_runs = [r for r in runs if r["tags"].get("search") == "search-check" and r["tags"]["group"] == c["group"]]
        assert {r["tags"]["rung"] for r in trial_runs} <= {0, 1} and {r["config"]["steps"] for r in trial_runs} <= {4, 12}
        # a trial is judged on the selection split alone: dev is neither scored nor read (it cost more than a
        # first rung's training on STS-B), its main score is the selection one, and its key says so
        for r in trial_runs:
            assert r["scores"] and all(k.startswith("selection/") for k in r["scores"]), r["scores"]
            assert r["config"]["score_official"] is False and r["main_metric"].startswith("selection/")
            assert r["main_score"] == r["scores"][r["main_metric"]]
            assert r["details"]["info"]["eval_examples"].keys() == {"selection"}
        low, high = METHODS.get(c["method"]).lr_prior  # the learning rate from the method's prior
        assert all(low <= r["config"]["lr"] <= high for r in trial_runs)
        if c["method"] == "lora":
            assert all(2 <= r["config"]["method_args"]["rank"] <= 8 for r in trial_runs)
        # the choice: the best *selection* score among full-budget trials (never a dev score)
        full = [r for r in trial_runs if r["config"]["steps"] == 12]
        metric = c["chosen_by"]
        assert metric.startswith("selection/")
        best = max(full, key=lambda r: r["scores"][metric])
        assert c["selection_score"] == pytest.approx(best["scores"][metric])
        assert c["chosen"]["lr"] == pytest.approx(best["config"]["lr"])
        # the final re-runs: 2 new seeds, full budget, tagged search_final, reported on dev
        finals = [r for r in runs if r["tags"].get("search_final") == "search-check" and r["tags"]["group"] == c["group"]]
        assert sorted(r["config"]["seed"] for r in finals) == [1, 2]
        assert all(r["config"]["steps"] == 12 and r["config"]["lr"] == pytest.approx(c["chosen"]["lr"]) for r in finals)
        assert all(r["config"]["score_official"] is True and r["main_metric"].startswith("dev/") for r in finals)
        dev = c["reported_on"]
        assert dev == "dev/" + metric.split("/", 1)[1]
        assert c["mean"] == pytest.approx(statistics.fmean(r["scores"][dev] for r in finals))
    # the study's values are the runs' selection scores (Optuna never saw dev)
    stored = {(r["tags"]["trial"], r["tags"]["group"]): r["scores"] for r in runs
              if r["tags"].get("search") and r["config"]["steps"] == 12}
    for study, number, state, _, value in trials_of(store.path):
        if state == "COMPLETE":
            scores = stored[(number, study.split("/")[1])]
            sel = [v for k, v in scores.items() if k.startswith("selection/") and v == pytest.approx(value)]
            assert sel, (scores, value)
    # successive halving at the 4-step rung (eta 3, three trials): a trial goes on to the full budget iff its rung
    # score is at least the best rung score so far in its configuration (Optuna's promotion rule)
    pruned = 0
    for c in configs:
        trial_runs = [r for r in runs if r["tags"].get("search") == "search-check" and r["tags"]["group"] == c["group"]]
        rung0 = sorted((r["tags"]["trial"], r["scores"][c["chosen_by"]]) for r in trial_runs if r["tags"]["rung"] == 0)
        went_on = {r["tags"]["trial"] for r in trial_runs if r["tags"]["rung"] == 1}
        for i, (trial, v) in enumerate(rung0):
            assert (trial in went_on) == (v >= max(x for _, x in rung0[:i + 1])), (c["label"], c["task"], rung0)
            pruned += trial not in went_on
    assert sum(1 for line in lines if "pruned at 4 steps" in line) == pruned
    assert s["plot"] and all(Path(p).stat().st_size > 0 for p in s["plot"])
    # the leaderboard of the search's store: one entry per method and task (the chosen setting's seeded re-runs;
    # trials are never entries), each with its tuned values and tuning budget, ranked across the two tasks
    from efficientft.api import leaderboard

    lb = leaderboard(store, out=tmp_path / "board")
    assert sorted(b.task for b in lb.tasks) == ["mrpc", "rte"]
    for board in lb.tasks:
        assert sorted(e.row.fields["method"] for e in board.entries) == ["bitfit", "full", "lora"]
        for e in board.entries:
            c = next(c for c in configs if c["method"] == e.row.fields["method"] and c["task"] == board.task)
            assert e.tuning.search == "search-check" and e.tuning.trials == 3
            assert e.tuning.tuned["lr"] == pytest.approx(c["chosen"]["lr"])
            assert e.cell.summary.mean == pytest.approx(c["mean"])
            assert e.tied is not None and sum(x.best for x in board.entries) == 1
    # one entry per method across both tasks, though its tuned lr (and LoRA's rank) differ per task: the values a
    # search chose are the cells', not the entry's name ("lora qv r=tuned λ=1"); so every entry is ranked
    labels = [sorted(e.row.label for e in board.entries) for board in lb.tasks]
    assert labels[0] == labels[1] and not any("lr=" in x for x in labels[0]), labels
    assert "lora qv r=tuned λ=1" in labels[0]
    assert sorted(lb.ranks.labels) == labels[0] and not lb.ranks.why and lb.ranks.tasks == ["mrpc", "rte"]
    assert sum(lb.ranks.mean_rank.values()) == pytest.approx(2 * 3)  # ranks 1..3 on each task, averaged
    assert (tmp_path / "board" / "plots" / "critical_difference.png").is_file()
    assert (tmp_path / "board" / "leaderboard.md").is_file() and (tmp_path / "board" / "leaderboard.html").is_file()
    # the plain report of that store: the trials are tuning, not rows; each row is a chosen configuration's re-runs,
    # and the table says which split chose them
    from efficientft.api import build_report

    rep = build_report(store)
    in_rows = [run for r in rep.collection.rows for c in r.cells.values() for run in c.runs]
    assert in_rows and all(run["tags"].get("search_final") == "search-check" for run in in_rows)
    assert rep.collection.trials_left_out == sum(1 for r in runs if r["tags"].get("search")
                                                 and not r["tags"].get("search_final"))
    note = next(n for n in rep.table.notes if "tuned by the search 'search-check'" in n)
    assert "chosen on selection/" in note and "optimistic" not in note


def test_the_same_seed_gives_the_same_trials(tmp_path, tiny_bert, glue_dir):
    def params(seed: int, where: str) -> list[tuple]:
        d = tmp_path / where
        d.mkdir()
        p = suite_file(d, tiny_bert, f"{{trials: 3, seed: {seed}, min_steps: 3, final_seeds: 0, "
                                     f"space: {{method_args.rank: {{int: [2, 8]}}}}}}")
        sweep(load_suite(p), Store(d / "runs.sqlite"), SweepOptions(env=environment()), log=lambda line: None)
        return [(n, state, sorted(pr.items())) for _, n, state, pr, _ in trials_of(d / "runs.sqlite")]

    a, b, c = params(0, "a"), params(0, "b"), params(1, "c")
    assert len(a) == 3 and a == b
    assert [x[2] for x in a] != [x[2] for x in c]


def test_a_search_killed_with_sigkill_resumes_and_loses_no_finished_trial(tmp_path, tiny_bert, glue_dir):
    p = suite_file(tmp_path, tiny_bert, "{trials: 6, min_steps: 3, final_seeds: 1}")
    store = tmp_path / "runs.sqlite"
    cmd, env = sweep_command(p, store, glue_dir)
    proc = signal_when(cmd, env, store, signal.SIGKILL, lambda trials: len(
        [t for t in trials if t[2] in ("COMPLETE", "PRUNED")]) >= 2 and any(t[2] == "RUNNING" and t[3] for t in trials))
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the search ended before it was killed: {proc.stderr.read()}"
    finished = [t for t in trials_of(store) if t[2] in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 2

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "was interrupted; it is replaced" in out.stdout
    after = trials_of(store)
    for t in finished:  # every trial finished before the kill is still there, the same
        assert t in after
    counted = [t for t in after if t[2] in ("COMPLETE", "PRUNED", "FAIL")]
    interrupted = [t for t in after if t[2] == "FAIL"]
    assert len(counted) - len(interrupted) == 6 and len(interrupted) == 1
    # the replacement samples what the interrupted trial sampled (seeded by the finished trials)
    repl = [t for t in after if t[1] == interrupted[0][1] + 1]
    assert repl and repl[0][3] == interrupted[0][3]
    print("killed after", [t[1:] for t in finished], "\nresumed:", [t[1:] for t in after])


@pytest.mark.parametrize("space, message", [
    ("{method_args.rnk: {int: [2, 8]}}",
     r"search\.space: unknown key 'method_args\.rnk': no method of the suite takes the argument 'rnk'"),
    ("{dropout_rate: {float: [0.0, 0.1]}}", r"search\.space: unknown key 'dropout_rate'"),
    ("{method_args.rank: {int: [8, 2]}}", r"search\.space\.method_args\.rank: low must be below high, got \[8, 2\]"),
    ("{lr: {float: [0, 1.0e-3], log: true}}", r"search\.space\.lr: a log distribution needs low > 0"),
    ("{lr: {uniform: [1.0e-4, 1.0e-3]}}", r"search\.space\.lr: unknown distribution 'uniform'"),
    ("{method_args.rank: {int: [0, 8]}}", r"search\.space\.method_args\.rank: the value 0 is not valid for"),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_training(tmp_path, tiny_bert, glue_dir, capsys, space,
                                                                message):
    import re

    from efficientft.cli import main

    p = suite_file(tmp_path, tiny_bert, f"{{trials: 2, space: {space}}}")
    store = tmp_path / "runs.sqlite"
    rc = main(["sweep", str(p), "--store", str(store)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert ", line 13: " in err  # the search block's line in the suite file
    assert not store.exists() and not (tmp_path / "runs.optuna.sqlite").exists()  # nothing was trained


LAMBDA_ENTRIES = ("  - {label: QV, method: lora, targets: qv, method_args: {rank: 4}}\n"
                  "  - {label: QV tuned, method: lora, targets: qv, method_args: {rank: 4},\n"
                  "     search: {lr_ratio: {float: [1, 8], log: true}}}\n")


def test_an_entry_searches_its_own_fields_as_one_configuration_of_its_own(tmp_path, tiny_bert, glue_dir):
    """Issue 27's "Q,V with λ tuned (λ as one more searched hyperparameter)": an entry's ``search:`` samples λ for
    that entry only; the λ = 1 entry beside it is another configuration with the same number of trials."""
    p = suite_file(tmp_path, tiny_bert, "{trials: 2, seed: 0, min_steps: 3, final_seeds: 1}", LAMBDA_ENTRIES)
    suite = load_suite(p)
    plain, tuned = suite.expand()
    assert plain.tags["group"] != tuned.tags["group"]
    from efficientft.sweep.search import space_of

    assert set(space_of(suite, plain.cfg, plain.tags["entry"])) == {"lr"}
    assert space_of(suite, tuned.cfg, tuned.tags["entry"])["lr_ratio"] == {"float": [1.0, 8.0], "log": True}
    store = Store(tmp_path / "runs.sqlite")
    s = sweep(suite, store, SweepOptions(env=environment()), log=lambda line: None)["search"]
    rows = {c["label"]: c for c in s["configurations"]}
    assert sum(rows["QV"]["trials"].values()) == sum(rows["QV tuned"]["trials"].values()) == 2
    trials = trials_of(tmp_path / "runs.sqlite")
    by_study = {}
    for study, _, _, params, _ in trials:
        by_study.setdefault(study, []).append(params)
    assert sorted(len(v) for v in by_study.values()) == [2, 2]
    searched = [sorted(k for p in v for k in p) for v in by_study.values()]
    assert sorted(map(tuple, map(sorted, map(set, searched)))) == [("lr",), ("lr", "lr_ratio")]
    lambdas = {r["config"]["lr_ratio"] for r in store.runs() if r["tags"].get("label") == "QV tuned"}
    assert len(lambdas) > 1 and all(1 <= x <= 8 for x in lambdas)  # lambda varies for the tuned entry only
    assert {r["config"]["lr_ratio"] for r in store.runs() if r["tags"].get("label") == "QV"} == {1.0}


@pytest.mark.parametrize("search, entries, message", [
    (None, LAMBDA_ENTRIES, r"line 13: methods\[1\]\.search: an entry's searched fields are part of a search; add "
                           r"a search: block"),
    ("{trials: 2}", "  - {label: X, method: lora, lr_ratio: 4, search: {lr_ratio: {float: [1, 8]}}}\n",
     r"methods\[0\] both sets and searches lr_ratio; keep one"),
    ("{trials: 2}", "  - {label: X, method: lora, search: {lr_ratio: {float: [0, 8], log: true}}}\n",
     r"methods\[0\]\.search\.lr_ratio: a log distribution needs low > 0"),
    ("{trials: 2}", "  - {label: X, method: lora, search: {method_args.xi: {float: [0.1, 1]}}}\n",
     r"methods\[0\]\.search: unknown key 'method_args.xi': method 'lora' takes no argument 'xi'"),
])
def test_a_bad_entry_search_is_one_line_before_any_training(tmp_path, tiny_bert, glue_dir, search, entries,
                                                            message):
    from efficientft.errors import ConfigError

    p = suite_file(tmp_path, tiny_bert, search or "{trials: 2}", entries)
    if search is None:
        p.write_text(p.read_text().replace("search: {trials: 2}\n", ""))
    with pytest.raises(ConfigError, match=message):
        load_suite(p).expand()


TWO_METHODS = ("  - {label: LoRA, method: lora, targets: qv, method_args: {rank: 4}}\n"
               "  - {label: IA3, method: ia3, targets: qv}\n")


def test_workers_search_configurations_side_by_side_and_choose_what_one_at_a_time_chooses(tmp_path, tiny_bert,
                                                                                          glue_dir):
    """--workers 2: two configurations' studies run at once (their runs overlap in time), each on a lane of its own,
    and every study's trials, pruning and choice equal a one-at-a-time search's; the final runs are the same keys."""
    def search(where: str, workers: int) -> tuple[list[tuple], dict, list[dict], list[str]]:
        d = tmp_path / where
        d.mkdir()
        p = suite_file(d, tiny_bert, "{trials: 3, seed: 0, min_steps: 3, final_seeds: 1}", methods=TWO_METHODS)
        lines: list[str] = []
        summary = sweep(load_suite(p), Store(d / "runs.sqlite"), SweepOptions(env=environment(), workers=workers),
                        log=lines.append)
        trials = [(study, n, state, sorted(pr.items()), None if v is None else round(v, 4))
                  for study, n, state, pr, v in trials_of(d / "runs.sqlite")]
        done = [(" ia3 " in x and "ia3") or (" lora " in x and "lora") for x in lines if "] done " in x]
        return trials, summary, Store(d / "runs.sqlite").runs(), done

    one, s1, runs1, done1 = search("one", 1)
    two, s2, runs2, done2 = search("two", 2)
    assert len({t[0] for t in one}) == 2 and len(one) == 6
    assert two == one
    assert [(c["label"], c["chosen"], c["final"][0]["key"]) for c in s2["search"]["configurations"]] == \
        [(c["label"], c["chosen"], c["final"][0]["key"]) for c in s1["search"]["configurations"]]
    assert sorted(r["run_key"] for r in runs2) == sorted(r["run_key"] for r in runs1)
    assert s2["executor"] == "local-pool" and s2["outcomes"] == s1["outcomes"]
    # one at a time: every LoRA run finishes before the first IA3 run; side by side they finish interleaved, on
    # both worker processes
    assert done1 == sorted(done1, key=["lora", "ia3"].index) and set(done1) == {"lora", "ia3"}
    assert sorted(done2) == sorted(done1) and done2 != done1, done2
    assert len({r["worker"] for r in runs2}) == 2 and len({r["worker"] for r in runs1}) == 1


def test_one_synchronous_configuration_trains_its_rung_and_its_final_seeds_on_every_lane(tmp_path, tiny_bert,
                                                                                         glue_dir):
    """A single configuration on --workers 2: its first rung's 6 trials and its 2 final seeds each train at once on
    both lanes (two worker processes), and the search is the one-at-a-time search's."""
    def search(where: str, workers: int) -> tuple[list[tuple], list[dict]]:
        d = tmp_path / where
        d.mkdir()
        p = suite_file(d, tiny_bert, "{trials: 6, seed: 0, min_steps: 1, final_seeds: 2, halving: synchronous}")
        sweep(load_suite(p), Store(d / "runs.sqlite"), SweepOptions(env=environment(), workers=workers),
              log=lambda line: None)
        trials = [(n, state, sorted(pr.items()), None if v is None else round(v, 4))
                  for _, n, state, pr, v in trials_of(d / "runs.sqlite")]
        return trials, Store(d / "runs.sqlite").runs()

    one, _ = search("one", 1)
    two, runs = search("two", 2)
    assert two == one
    first = [r for r in runs if (r.get("tags") or {}).get("rung") == 0]
    finals = [r for r in runs if (r.get("tags") or {}).get("search_final")]
    assert len(first) == 6 and len({r["worker"] for r in first}) == 2
    assert len(finals) == 2 and len({r["worker"] for r in finals}) == 2


def test_a_side_by_side_search_stopped_with_sigterm_fails_no_trial_and_resumes_every_configuration(
        tmp_path, tiny_bert, glue_dir):
    """SIGTERM to `eft sweep --workers 2` while both configurations train: the lanes' runs stop, no trial is told
    as failed (each study's trial in flight is left running, marked interrupted by
    the next search), and the next search finishes each study with its full count of trials."""
    p = suite_file(tmp_path, tiny_bert, "{trials: 4, min_steps: 3, final_seeds: 1}", methods=TWO_METHODS, steps=27)
    store = tmp_path / "runs.sqlite"
    cmd, env = sweep_command(p, store, glue_dir, "--workers", "2")
    proc = signal_when(cmd, env, store, signal.SIGTERM, lambda trials: len(
        {t[0] for t in trials if t[2] in ("COMPLETE", "PRUNED")}) == 2 and len(
        {t[0] for t in trials if t[2] == "RUNNING" and t[3]}) == 2)  # both studies have finished one and train one
    proc.wait(timeout=120)
    assert proc.returncode not in (0, None, -signal.SIGKILL), "the search ended before it was stopped"
    stopped = trials_of(store)
    assert not [t for t in stopped if t[2] == "FAIL"], stopped  # nothing scored a stopped run as a failed trial
    assert len({t[0] for t in stopped if t[2] == "RUNNING"}) == 2
    # (a run stopped before its training loop began dies with SIGTERM's default: left `running` under a dead
    # worker, it is taken over by the next sweep like any run of a killed worker)

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("was interrupted; it is replaced") == len([t for t in stopped if t[2] == "RUNNING"])
    after = trials_of(store)
    for study in {t[0] for t in after}:
        mine = [t for t in after if t[0] == study]
        assert len([t for t in mine if t[2] in ("COMPLETE", "PRUNED")]) == 4, mine
    assert {r["status"] for r in Store(store).runs()} == {"done"}


# ---------------------------------------------------------------------------------------------- synchronous halving
def test_synchronous_promotion_keeps_the_best_n_over_eta_of_every_value_at_the_rung():
    from efficientft.sweep.search import promoted

    assert promoted({0: 0.5, 1: 0.7, 2: 0.6, 3: 0.4, 4: 0.9, 5: 0.1}, {}, 3, True) == {4, 1}
    assert promoted({0: 0.5, 1: 0.7, 2: 0.6, 3: 0.4, 4: 0.9, 5: 0.1}, {}, 3, False) == {5, 3}  # a loss: lowest
    assert promoted({7: 0.5, 8: 0.5}, {}, 3, True) == {7}  # max(1, 2 // 3) = 1; a tie: the lower number
    # earlier trials (a resumed search) take places without being this batch's: 8 values, 2 places, one taken
    assert promoted({6: 0.8, 7: 0.3}, {0: 0.9, 1: 0.1, 2: 0.2, 3: 0.2, 4: 0.3, 5: 0.4}, 3, True) == {6}
    assert promoted({6: 0.1, 7: 0.3}, {0: 0.9, 1: 0.8, 2: 0.2, 3: 0.2, 4: 0.3, 5: 0.4}, 3, True) == set()


def _rung_scores(store_path: Path, rung: int) -> dict[float, float]:
    """lr -> selection accuracy of the stored rung runs (a trial's lr identifies it: one lr per trial)."""
    return {r["config"]["lr"]: r["scores"]["selection/accuracy"] for r in Store(store_path).runs()
            if (r.get("tags") or {}).get("rung") == rung}


def test_synchronous_halving_trains_every_trials_rung_before_promoting_the_best_third(tmp_path, tiny_bert,
                                                                                       glue_dir):
    """search: {halving: synchronous}, 6 trials, η = 3, rungs 1 and 3 of 9 steps: 6 first-rung runs, then exactly
    the best 2 by selection score (ties: the lower trial number) at 3 steps, then the better of those 2 at the full
    budget — 1 complete, 5 pruned; the choice is that trial's, re-run on a new seed. (Asynchronous halving sends
    the first trials on before the others are scored.)"""
    p = suite_file(tmp_path, tiny_bert, "{trials: 6, seed: 3, min_steps: 1, final_seeds: 1, halving: synchronous}")
    store = tmp_path / "runs.sqlite"
    summary = sweep(load_suite(p), Store(store), SweepOptions(env=environment()), log=lambda line: None)
    trials = trials_of(store)
    assert sorted(t[2] for t in trials) == ["COMPLETE"] + ["PRUNED"] * 5
    lr_of = {r["tags"]["trial"]: r["config"]["lr"] for r in Store(store).runs() if r["tags"].get("rung") == 0}
    first, second, full = (_rung_scores(store, k) for k in (0, 1, 2))
    assert len(first) == 6 and len(second) == 2 and len(full) == 1
    best_two = sorted(lr_of, key=lambda n: (-first[lr_of[n]], n))[:2]
    assert set(second) == {lr_of[n] for n in best_two}
    winner = sorted(best_two, key=lambda n: (-second[lr_of[n]], n))[0]
    assert set(full) == {lr_of[winner]}
    conf = summary["search"]["configurations"][0]
    assert conf["chosen"]["lr"] == pytest.approx(lr_of[winner]) and conf["trials"]["COMPLETE"] == 1
    assert conf["steps_spent"] == 6 * 1 + 2 * 3 + 9  # exactly successive halving's count


@pytest.mark.parametrize("sampler", ["tpe", "halton"])
def test_a_synchronous_search_killed_in_its_first_rung_resamples_the_same_trials_and_retrains_nothing_done(
        tmp_path, tiny_bert, glue_dir, sampler):
    p = suite_file(tmp_path, tiny_bert, f"{{trials: 6, min_steps: 3, final_seeds: 1, halving: synchronous, "
                                        f"sampler: {sampler}}}", steps=27)
    store = tmp_path / "runs.sqlite"
    cmd, env = sweep_command(p, store, glue_dir)
    proc = signal_when(cmd, env, store, signal.SIGKILL, lambda trials: len(Store(store).runs("done")) >= 2
                       if store.exists() else False)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the search ended before it was killed: {proc.stderr.read()}"
    before = trials_of(store)
    done_before = {r["run_key"] for r in Store(store).runs("done")}
    assert len(before) == 6 and {t[2] for t in before} == {"RUNNING"} and len(done_before) >= 2
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("was interrupted; it is replaced") == 6
    after = [t for t in trials_of(store) if t[1] >= 6]
    assert sorted(t[3]["lr"] for t in after) == sorted(t[3]["lr"] for t in before)  # the same values again
    assert out.stdout.count("] skipped (done)") == len(done_before), out.stdout  # their first rungs: found done
    assert sorted(t[2] for t in after) == ["COMPLETE"] + ["PRUNED"] * 5


def test_synchronous_halving_is_refused_on_ray_and_a_bad_value_in_one_line(tmp_path, tiny_bert, glue_dir, capsys):
    from efficientft.cli import main

    pytest.importorskip("ray")
    p = suite_file(tmp_path, tiny_bert, "{trials: 2, halving: synchronous}")
    assert main(["sweep", str(p), "--executor", "ray", "--store", str(tmp_path / "a.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["eft sweep: error: search.halving: synchronous runs on the local executors (Optuna); on Ray, "
                   "Tune's ASHA halves asynchronously: drop --executor ray, or the halving line."]
    p = suite_file(tmp_path, tiny_bert, "{trials: 2, halving: sync}")
    assert main(["sweep", str(p), "--store", str(tmp_path / "b.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("line 13: search.halving must be asynchronous or synchronous, got "
                                             "'sync'."), err
    assert not (tmp_path / "a.sqlite").exists() and not (tmp_path / "b.sqlite").exists()


def test_a_halton_design_puts_one_point_in_each_stratum_where_random_draws_bunch():
    """sampler: halton — 8 learning rates over LoRA's prior fall one in each eighth of its log-range (the same
    seed's 8 random draws, what TPE gives below its 10 start-up trials, put 7 in one third of it); an int and a
    choice dimension take their whole range and every choice; the same seed gives the same design."""
    import math

    optuna = pytest.importorskip("optuna")
    from efficientft.sweep.search import design, unused

    lr = {"float": [1e-4, 3e-3], "log": True}
    points = design({"lr": lr}, 8, 0)
    strata = sorted(int(8 * (math.log(p["lr"]) - math.log(1e-4)) / (math.log(3e-3) - math.log(1e-4)))
                    for p in points)
    assert strata == list(range(8))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}).params["lr"]
             for _ in range(8)]
    assert sum(4.2e-4 <= x <= 1.15e-3 for x in drawn) == 7  # the bunching the design avoids
    space = {"lr": lr, "method_args.rank": {"int": [2, 16], "log": False}, "tuner": {"choice": ["a", "b", "c"]}}
    many = design(space, 32, 5)
    assert design(space, 32, 5) == many and design(space, 32, 6) != many
    assert {p["tuner"] for p in many} == {"a", "b", "c"}
    ranks = [p["method_args.rank"] for p in many]
    assert min(ranks) == 2 and max(ranks) == 16 and all(isinstance(r, int) for r in ranks)
    assert all(1e-4 <= p["lr"] < 3e-3 for p in many)
    assert unused(points, [points[3], points[0]]) == [points[i] for i in (1, 2, 4, 5, 6, 7)]


def test_a_halton_search_trains_the_designs_points(tmp_path, tiny_bert, glue_dir):
    from efficientft.methods import METHODS
    from efficientft.sweep.search import design

    p = suite_file(tmp_path, tiny_bert, "{trials: 4, seed: 2, min_steps: 3, final_seeds: 1, sampler: halton}")
    sweep(load_suite(p), Store(tmp_path / "runs.sqlite"), SweepOptions(env=environment()), log=lambda line: None)
    low, high = METHODS.get("lora").lr_prior
    want = sorted(x["lr"] for x in design({"lr": {"float": [low, high], "log": True}}, 4, 2))
    assert sorted(t[3]["lr"] for t in trials_of(tmp_path / "runs.sqlite")) == pytest.approx(want, rel=1e-12)


def test_a_sampler_other_than_tpe_is_refused_on_ray_and_a_bad_one_in_one_line(tmp_path, tiny_bert, glue_dir,
                                                                            capsys):
    from efficientft.cli import main

    pytest.importorskip("ray")
    p = suite_file(tmp_path, tiny_bert, "{trials: 2, sampler: halton}")
    assert main(["sweep", str(p), "--executor", "ray", "--store", str(tmp_path / "a.sqlite")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eft sweep: error: search.sampler: halton runs on the local executors (Optuna); on Ray, the trials are "
        "sampled by TPE: drop --executor ray, or the sampler line."]
    p = suite_file(tmp_path, tiny_bert, "{trials: 2, sampler: sobol}")
    assert main(["sweep", str(p), "--store", str(tmp_path / "b.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("line 13: search.sampler must be tpe or halton, got 'sobol'."), err


@pytest.mark.parametrize("workers", [2, 1])
def test_the_studies_executor_gives_each_final_seed_a_fresh_process_and_the_trials_a_reused_one(
        tmp_path, tiny_bert, glue_dir, workers):
    """The study suites' settings (`--workers 2 --fresh-process`, synchronous halving, Halton trials): every run is
    done; each final seed — whose cost the report compares — in a worker process of its own, first in it; the
    trials, whose costs nobody compares, one after another in a reused worker (no process start per trial), one
    worker process per lane at a time; both configurations count their trials. `--workers 1` alike."""
    p = suite_file(tmp_path, tiny_bert, "{trials: 4, seed: 0, min_steps: 1, final_seeds: 2, halving: synchronous, "
                                        "sampler: halton}", methods=TWO_METHODS)
    summary = sweep(load_suite(p), Store(tmp_path / "runs.sqlite"),
                    SweepOptions(env=environment(), workers=workers, fresh_process=True), log=lambda line: None)
    runs = Store(tmp_path / "runs.sqlite").runs()
    assert {r["status"] for r in runs} == {"done"} and summary["outcomes"] == {"done": len(runs)}
    finals = [r for r in runs if r["tags"].get("search_final")]
    trial_runs = [r for r in runs if not r["tags"].get("search_final")]
    assert len(finals) == 4 and len(trial_runs) == 2 * (4 + 1 + 1)  # per configuration: 4 at 1 step, 1 at 3, 1 at 9
    assert all(r["details"]["fresh_process"] for r in finals)
    workers_of_finals = {r["worker"] for r in finals}
    assert len(workers_of_finals) == len(finals)  # one process each
    assert workers_of_finals.isdisjoint(r["worker"] for r in trial_runs)
    # a lane's reused worker starts once, and again after a configuration's final seeds took the lane
    assert sum(r["details"]["fresh_process"] for r in trial_runs) <= workers * (1 + 2)
    for w in {r["worker"] for r in trial_runs}:  # a reused worker ran trials, its first one fresh
        mine = sorted((r for r in trial_runs if r["worker"] == w), key=lambda r: r["started_at"])
        assert mine[0]["details"]["fresh_process"] and not any(r["details"]["fresh_process"] for r in mine[1:])
    trials = trials_of(tmp_path / "runs.sqlite")
    assert len(trials) == 8 and sorted(t[2] for t in trials) == ["COMPLETE"] * 2 + ["PRUNED"] * 6
