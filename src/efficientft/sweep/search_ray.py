"""A search on a Ray cluster: each configuration's trials run through Ray Tune (``eft sweep --executor ray``).

The same search as :mod:`.search` (the same space, trials per configuration, rungs, metric and direction), on Ray
Tune's public API: a :class:`ray.tune.Tuner` per configuration with Optuna's TPE as the searcher
(:class:`ray.tune.search.optuna.OptunaSearch`, seeded by the search's seed) and asynchronous successive halving as
the scheduler (:class:`ray.tune.schedulers.ASHAScheduler`, Li et al. 2018: grace period ``min_steps``, reduction
factor η, ``max_t`` the full budget; its time unit is a rung's optimizer steps, so its milestones are the rungs
:func:`.search.rungs_of` gives). A Tune trial trains its rungs one after another, each a run of its own built by
:func:`.search.trial_run` (the keys and tags of the Optuna path), and reports each rung's selection score; ASHA
stops it at a rung or it reaches the full budget.

**The driver writes the store**, as with the Ray executor: a trial trains each rung into a throw-away store on its
node and reports the record with its score; a callback in the driver (``eft sweep``) claims the key and imports
the record. A rung run the store already holds (done, or failed and not ``--retry-failed``) is not trained again:
the trial reports its stored score.

Resumable means: a rerun trains no rung run that is in the store, and samples only the trials a configuration
still lacks. Each finished trial (complete, pruned, failed) is written to ``<store>.raytune/<suite>/<group>.json``
as it finishes; a rerun counts those, tells TPE their values (``OptunaSearch.add_evaluated_point``) and samples
the rest, numbered after every trial the store holds. A trial left unfinished by a killed search is not counted
(its rung runs stay in the store) and a new one is sampled in its place. Ray Tune's own experiment state lives
beside it, in ``<store>.raytune/<suite>/<group>/``, and is not needed to resume. Without the ``.json`` files the
search starts again with the same seeded sampler: run one trial at a time (``--ray-num-cpus 1``) it samples the
same values and finds every run done; with parallel trials TPE's later samples depend on the order results come
in. Ray's integration tells Optuna a trial ASHA stopped as complete with its last rung's score (Optuna's own
pruner marks it pruned): that shapes TPE's later samples only; the choice reads full-budget trials alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import Store, skip_reason
from .executors import steps_trained
from .expand import item
from .search import (
    Trial,
    distributions,
    pruned_note,
    rungs_of,
    sampler_seed,
    score_of,
    space_of,
    trial_line,
    trial_run,
    tune_path,
)
from .suite import PlannedRun, Suite

TUNE_ENV = {  # set while a search runs
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # the store is the record: Tune's result.json (it reads it back) only
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed rung reports no score (ASHA skips it)
}
PAYLOAD = "eft_run"  # the result key that carries a rung's record to the driver (taken out there)


def _trainable(config: dict[str, Any], *, spec: dict[str, Any]) -> None:
    """One Tune trial, on a Ray worker: its rungs in order, each reported (``score`` to ASHA, which may stop it
    there; ``value`` to OptunaSearch); a rung without a score ends the trial, failed."""
    from ray import tune

    from .ray_executor import _ray_trial

    base, metric, full = spec["base"], spec["metric"], spec["base"].cfg.steps
    params = {name: config[name] for name in spec["names"]}
    for k, budget in enumerate([*spec["rungs"], full]):
        result: dict[str, Any] = {"budget": budget, "rung": k}
        try:
            run = trial_run(spec["suite"], base, params, None, k, budget, metric)
        except ConfigError as e:  # a sampled value no rule accepts: the trial fails, the search goes on
            tune.report({**result, "value": math.nan, "failed": f"failed: {e}"})
            return
        known = spec["known"].get(run.key)
        if known is not None:  # in the store: not trained again
            status, scores = known
            result[PAYLOAD] = ("skipped", run.key, status, run.describe())
        else:
            record, curves, _ = _ray_trial(item(run))
            status, scores = record["status"], record.get("scores")
            result[PAYLOAD] = ("trained", record, curves, run.describe())
        v = score_of({"status": status, "scores": scores}, metric)
        if v is None:  # no score for ASHA; NaN for Optuna, which stores the trial failed
            tune.report({**result, "value": math.nan, "failed": f"failed ({status})"})
            return
        tune.report({**result, "score": v, "value": v})


def _load(path: Path) -> list[Trial]:
    if not path.is_file():
        return []
    return [Trial(**t) for t in json.loads(path.read_text())]


def _save(path: Path, trials: list[Trial]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([vars(t) for t in sorted(trials, key=lambda t: t.number)], indent=1))
    os.replace(tmp, path)  # atomic: a killed search leaves the old list or the new one


def tune_trials(suite: Suite, base: PlannedRun, metric: str, maximise: bool, store: Store, executor,
                on_result: Callable, log: Callable[[str], None]) -> list[Trial]:
    """One configuration's search on Ray Tune; returns its finished trials (those of earlier runs too)."""
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    se, group = suite.search, base.tags["group"]
    full = base.cfg.steps
    rungs = rungs_of(se, full, base.cfg.task)
    space = space_of(suite, base.cfg, base.tags.get("entry"))
    where = tune_path(store) / suite.name
    where.mkdir(parents=True, exist_ok=True)
    done_path = where / f"{group}.json"
    finished = _load(done_path)
    missing = se.trials - len(finished)
    if missing <= 0:
        return finished
    records = store.runs()
    mine = [r for r in records if (r.get("tags") or {}).get("search") == suite.name
            and r["tags"].get("group") == group and isinstance(r["tags"].get("trial"), int)]
    first = 1 + max([t.number for t in finished] + [r["tags"]["trial"] for r in mine]) if finished else 0
    # what a trial finds in the store instead of training (the sweep's skip policy)
    known = {r["run_key"]: (r["status"], r.get("scores")) for r in records
             if skip_reason(r["status"], owner=r.get("worker"), retry_failed=executor.retry_failed,
                            reclaim=executor.reclaim) is not None}
    mode = "max" if maximise else "min"
    searcher = OptunaSearch(space=distributions(optuna, space), metric="value", mode=mode,
                            sampler=optuna.samplers.TPESampler(seed=sampler_seed(se, len(finished))))
    for t in finished:  # what earlier runs of this search found, told to TPE
        searcher.add_evaluated_point(t.params, t.value, error=t.state == "FAIL", pruned=t.state == "PRUNED")
    scheduler = ASHAScheduler(time_attr="budget", metric="score", mode=mode, max_t=full,
                              grace_period=rungs[0] if rungs else full, reduction_factor=se.reduction_factor)
    spec = {"suite": suite, "base": base, "metric": metric, "rungs": rungs, "names": list(space), "known": known}
    executor.start()
    import ray

    gpus = executor.gpus_per_run
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    trainable = tune.with_resources(tune.with_parameters(_trainable, spec=spec),
                                    {"cpu": executor.cpus_per_run, "gpu": gpus})
    writer = _writer(store, executor, on_result, log, suite, base, metric, full, first, finished, done_path)
    # reuse_actors: a trial's worker has torch and the model code imported already (seconds a trial on a CPU)
    tuner = tune.Tuner(trainable,
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=missing,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(name=group, storage_path=str(where), verbose=0,
                                                 callbacks=[writer, JsonLoggerCallback()]))
    before = {k: os.environ.get(k) for k in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    try:
        tuner.fit()
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return _load(done_path)


def _writer(store: Store, executor, on_result: Callable, log: Callable[[str], None], suite: Suite, base: PlannedRun,
            metric: str, full: int, first: int, finished: list[Trial], done_path: Path):
    """The driver's side of the trials: each rung's record into the store, each finished trial into the list."""
    from ray import tune

    class Writer(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            payload = result.pop(PAYLOAD, None)  # Tune lets a callback change the result in place
            if payload is None:
                return
            number = first + trials.index(trial)
            if payload[0] == "skipped":
                _, key, status, what = payload
                on_result({"key": key, "describe": what, "status": "skipped", "reason": status})
                return
            _, record, curves, what = payload
            record.setdefault("tags", {})["trial"] = number
            key = record["run_key"]
            claimed, previous = store.claim(key, record["config"], record["tags"], executor.retry_failed,
                                            executor.reclaim)
            if not claimed:  # another sweep stored it meanwhile: its record stands
                on_result({"key": key, "describe": what, "status": "skipped", "reason": previous})
                return
            store.import_run(record, curves)
            on_result({"key": key, "describe": what, "status": record["status"], "error": record.get("error"),
                       "worker": record.get("worker"), "main_score": record.get("main_score"),
                       "main_metric": record.get("main_metric"), "steps": steps_trained(record),
                       "previous": previous, "wall_s": (record.get("cost") or {}).get("wall_s", 0)})

        def _finish(self, trials, trial, failed: bool) -> None:
            number = first + trials.index(trial)
            last = trial.last_result or {}
            params = {n: trial.config[n] for n in space_names}
            budget, v = last.get("budget"), last.get("score")
            scored = v is not None and not math.isnan(v)
            if failed or not scored:
                state, value, note = "FAIL", None, last.get("failed") or "failed"
            elif budget == full:
                state, value, note = "COMPLETE", v, f"{metric} {v:.4f}"
            else:
                state, value, note = "PRUNED", None, pruned_note(budget, metric, v)
            reached = [b for b in rung_budgets if budget is not None and b <= budget]
            steps = sum(b for b in reached if b < full and (b != budget or scored)) + (full if state == "COMPLETE"
                                                                                       else 0)
            finished.append(Trial(number, state, params, value, steps))
            _save(done_path, finished)
            log(trial_line(suite, base, number, params, note))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trials, trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trials, trial, failed=True)

    space_names = list(space_of(suite, base.cfg, base.tags.get("entry")))
    rung_budgets = [*rungs_of(suite.search, full, base.cfg.task), full]
    return Writer()
