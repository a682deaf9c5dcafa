"""A search on Ray Tune (issue 25 §2): ``eft sweep --executor ray`` runs a suite's ``search:`` block through
``ray.tune.Tuner`` (OptunaSearch, ASHA) on a local Ray of one CPU — every configuration gets exactly its trials,
each rung a stored, tagged run at the rung's budget, ASHA stops trials at the rung by the successive-halving rule,
the choice's final seeds run, the leaderboard builds from the store, and a rerun trains nothing; without Ray the
refusal is one line."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")
ray = pytest.importorskip("ray")

from efficientft.methods import METHODS  # noqa: E402
from efficientft.store import Store  # noqa: E402
from efficientft.sweep.options import SweepOptions, environment  # noqa: E402
from efficientft.sweep.runner import sweep  # noqa: E402
from efficientft.sweep.search import rungs_of, tune_path  # noqa: E402
from efficientft.sweep.suite import load_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def suite_file(tmp_path: Path, model: Path) -> Path:
    p = tmp_path / "search.yaml"
    p.write_text(f"""name: s
defaults: {{model: {model}, task: stsb, max_length: 32, batch_size: 8, max_train: 48, max_eval: 16, steps: 9}}
methods:
  - {{label: LoRA, method: lora, targets: qv, method_args: {{rank: 4}}}}
  - {{label: BitFit, method: bitfit}}
selection: {{selection_size: 16}}
search: {{trials: 3, seed: 0, min_steps: 3, reduction_factor: 3, final_seeds: 1,
          space: {{method_args.rank: {{int: [2, 8]}}}}}}
""")
    return p


def test_a_search_runs_on_ray_tune_stores_its_trials_and_a_rerun_trains_nothing(tmp_path, tiny_bert, glue_dir):
    suite = load_suite(suite_file(tmp_path, tiny_bert))
    assert rungs_of(suite.search, 9, "stsb") == [3]
    store = Store(tmp_path / "runs.sqlite")
    opts = SweepOptions(executor="ray", env=environment())
    lines: list[str] = []
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}})
    try:
        s = sweep(suite, store, opts, log=lines.append)
        first = {r["run_key"]: r for r in store.runs()}
        again = sweep(suite, store, opts, log=lambda line: None)
        for f in (tune_path(store) / "s").glob("*.json"):
            f.unlink()
        lost = sweep(suite, store, opts, log=lambda line: None)
    finally:
        ray.shutdown()
    search = s["search"]
    assert search["engine"] == "ray-tune" and search["storage"] == str(tune_path(store))
    runs = list(first.values())
    assert all(r["status"] == "done" for r in runs)
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert all(r["worker"] != me for r in runs)  # trained in Ray workers, written by this driver
    configs = search["configurations"]
    assert sorted(c["method"] for c in configs) == ["bitfit", "lora"]
    pruned = 0
    for c in configs:
        assert sum(c["trials"].values()) == 3  # exactly `trials` per configuration
        trial_runs = [r for r in runs if r["tags"].get("search") == "s" and r["tags"]["group"] == c["group"]]
        assert {r["tags"]["trial"] for r in trial_runs} == {0, 1, 2}
        # the rungs are ASHA's milestones: min_steps, then the full budget; each a run of its own
        for r in trial_runs:
            assert (r["tags"]["rung"], r["tags"]["budget"], r["config"]["steps"]) in {(0, 3, 3), (1, 9, 9)}, r["tags"]
            assert r["provenance"]["data_files"] and len([x for x in store.curves(r["run_key"]) if x[2] == "loss"]) \
                == r["config"]["steps"]
        low, high = METHODS.get(c["method"]).lr_prior
        assert all(low <= r["config"]["lr"] <= high for r in trial_runs)
        if c["method"] == "lora":
            assert all(2 <= r["config"]["method_args"]["rank"] <= 8 for r in trial_runs)
            assert len({r["config"]["method_args"]["rank"] for r in trial_runs}) > 1  # searched, not fixed at 4
        # ASHA (η 3, one trial at a time): a trial goes on from the 3-step rung iff its score is at least the
        # best rung score so far; the others stop there
        metric = c["chosen_by"]  # STS-B's Pearson correlation: continuous scores, so ASHA has something to cut
        assert metric.startswith("selection/")
        rung0 = sorted((r["tags"]["trial"], r["scores"][metric]) for r in trial_runs if r["tags"]["rung"] == 0)
        assert [t for t, _ in rung0] == [0, 1, 2]
        went_on = {r["tags"]["trial"] for r in trial_runs if r["tags"]["rung"] == 1}
        for i, (trial, v) in enumerate(rung0):
            assert (trial in went_on) == (v >= max(x for _, x in rung0[:i + 1])), (c["label"], rung0)
        assert c["trials"] == {"COMPLETE": len(went_on), "PRUNED": 3 - len(went_on), "FAIL": 0}
        assert c["steps_spent"] == 3 * 3 + 9 * len(went_on)
        pruned += 3 - len(went_on)
        # the choice: the best full-budget selection score; its final seed re-run at the full budget, on dev
        full = [r for r in trial_runs if r["tags"]["rung"] == 1]
        best = max(full, key=lambda r: r["scores"][metric])
        assert c["selection_score"] == pytest.approx(best["scores"][metric]) and c["trial"] == best["tags"]["trial"]
        finals = [r for r in runs if r["tags"].get("search_final") == "s" and r["tags"]["group"] == c["group"]]
        assert [(r["config"]["seed"], r["config"]["steps"]) for r in finals] == [(1, 9)]
        assert finals[0]["config"]["lr"] == pytest.approx(best["config"]["lr"])
        assert c["mean"] == pytest.approx(finals[0]["scores"][c["reported_on"]])
    assert pruned >= 1 and sum("pruned at 3 steps" in line for line in lines) == pruned
    assert s["outcomes"] == {"done": len(runs)}
    # the leaderboard reads the Ray search's store as an Optuna one: entries are the final re-runs, 3 trials each
    from efficientft.api import leaderboard

    lb = leaderboard(store, out=tmp_path / "board")
    (board,) = lb.tasks
    assert sorted(e.row.fields["method"] for e in board.entries) == ["bitfit", "lora"]
    assert all(e.tuning.search == "s" and e.tuning.trials == 3 for e in board.entries)
    # a rerun trains nothing: every trial is found finished, every final run done; without the finished-trial
    # lists (Ray Tune's side of the search), the seeded sampler, one trial at a time, samples the same trials
    # again and finds each rung run in the store
    for rerun in (again, lost):
        assert rerun["steps_trained"] == 0 and set(rerun["outcomes"]) == {"skipped (done)"}, rerun["outcomes"]
        assert [(c["chosen"], c["trials"]) for c in rerun["search"]["configurations"]] == \
            [(c["chosen"], c["trials"]) for c in configs]
    assert sum(v for k, v in lost["outcomes"].items()) > sum(v for k, v in again["outcomes"].items())
    assert {r["run_key"]: r["attempts"] for r in store.runs()} == {k: r["attempts"] for k, r in first.items()}


@pytest.mark.parametrize("search, message", [
    (True, "a search: block with --executor ray needs Ray Tune"),
    (False, "--executor ray needs Ray"),  # a plain sweep too
])
def test_without_ray_the_executor_is_refused_in_one_line(tmp_path, tiny_bert, glue_dir, capsys, monkeypatch, search,
                                                         message):
    from efficientft.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    p = suite_file(tmp_path, tiny_bert)
    if not search:
        p.write_text(p.read_text().split("search:")[0])
    store = tmp_path / "runs.sqlite"
    rc = main(["sweep", str(p), "--executor", "ray", "--store", str(store)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: {message} (" in err and "pip install 'efficientft[ray]'" in err, err
    assert not store.exists()


def test_a_failed_rung_fails_its_trial_and_the_search_goes_on(tmp_path, tiny_bert, glue_dir):
    import optuna

    from efficientft.sweep.search import distributions, metric_of, sampler_seed, space_of, trial_run

    p = suite_file(tmp_path, tiny_bert)
    p.write_text(p.read_text().replace("  - {label: LoRA, method: lora, targets: qv, method_args: {rank: 4}}\n", "")
                 .replace("trials: 3", "trials: 2").replace("final_seeds: 1", "final_seeds: 0")
                 .replace("space: {method_args.rank: {int: [2, 8]}}", "space: {}"))
    suite = load_suite(p)
    (base,) = suite.expand(environment())
    # the first trial's values (OptunaSearch asks a TPE study seeded by the search's seed) and its first rung's run
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(suite.search, 0))
    first = optuna.create_study(sampler=sampler, direction="maximize").ask(distributions(optuna, space_of(suite,
                                                                                                          base.cfg)))
    run = trial_run(suite, base, first.params, 0, 0, 3, metric_of(suite, base.cfg))
    store = Store(tmp_path / "runs.sqlite")
    store.claim(run.key, run.cfg.to_dict(), run.tags)
    store.finish(run.key, "failed", error="made to fail")  # stored failed: not trained again (no --retry-failed)
    lines: list[str] = []
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}})
    try:
        s = sweep(suite, store, SweepOptions(executor="ray", env=environment()), log=lines.append)
    finally:
        ray.shutdown()
    (c,) = s["search"]["configurations"]
    assert c["trials"]["FAIL"] == 1 and sum(c["trials"].values()) == 2  # the failed trial counts; one more ran
    assert any(line.endswith("-> failed (failed)") and "trial 0 of BitFit" in line for line in lines), lines
    rec = store.get(run.key)
    assert rec["status"] == "failed" and rec["error"] == "made to fail" and rec["attempts"] == 1
    other = [r for r in store.runs() if r["tags"].get("trial") == 1]
    assert other and all(r["status"] == "done" for r in other)
    assert c["chosen"]["lr"] == pytest.approx(other[0]["config"]["lr"])
