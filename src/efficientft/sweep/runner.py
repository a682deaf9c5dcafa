"""Run a suite: expand and validate it, skip what the store has done, execute the rest, select, summarise.

Policy on what runs again (documented in the README):

- ``done``: never (skip-if-done; ``eft run --force`` re-runs one config);
- ``running`` under a dead ``host:pid`` of this host (a killed sweep): yes, it is taken over; ``running`` under a
  live process or another host: no (``--reclaim`` takes over every ``running`` row: for a sweep that died on
  another machine);
- ``cancelled`` (Ctrl-C / SIGTERM): yes;
- ``failed`` / ``diverged``: no — the same config fails the same way, and a divergence is a result — unless
  ``--retry-failed``.

With an ``early_stopping`` block (and not ``--no-early-stopping``) the selection groups go through successive
halving: each rung is a batch of runs with ``steps`` = the rung's budget, trained from scratch (a run with
other steps is another experiment: its learning-rate schedule decays over its own length), the best 1/η by mean
selection score over seeds go on, and the survivors train the full budget. The compute this costs is counted in
optimizer steps and compared with the full grid's; when the store also holds the full grid (a run with
``--no-early-stopping``), the summary says whether both choose the same configuration.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..resolve import run_key
from ..store import Store, skip_reason
from .executors import InProcess, LocalPool, Outcome
from .expand import item
from .options import EXECUTORS, SweepOptions, environment  # noqa: F401 - their home before the schema
from .selection import halving, over_values, select
from .suite import PlannedRun, Suite


def make_executor(opts: SweepOptions, store: Store):
    path = str(store.path)
    if opts.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(path, opts.ray_address, opts.ray_num_cpus, retry_failed=opts.retry_failed,
                           reclaim=opts.reclaim)
    if opts.workers > 1 or opts.fresh_process:
        return LocalPool(path, opts.workers, opts.retry_failed, opts.reclaim, opts.fresh_process)
    return InProcess(path, opts.retry_failed, opts.reclaim)


def check_options(suite: Suite, opts: SweepOptions) -> None:
    """What a suite cannot do with these options, refused before anything runs."""
    if suite.search is not None:
        from .search import optuna_or_error

        optuna_or_error()  # installed (the search extra), before the store is opened
    if opts.executor == "ray":
        from .ray_executor import ray_or_error

        ray_or_error(tune=suite.search is not None)  # a search runs on Ray Tune (sweep/search_ray.py)
        if suite.search is not None and suite.search.halving == "synchronous":
            raise ConfigError("search.halving: synchronous runs on the local executors (Optuna); on Ray, Tune's "
                              "ASHA halves asynchronously: drop --executor ray, or the halving line.")
        if suite.search is not None and suite.search.sampler != "tpe":
            raise ConfigError(f"search.sampler: {suite.search.sampler} runs on the local executors (Optuna); on Ray, "
                              f"the trials are sampled by TPE: drop --executor ray, or the sampler line.")


# ---------------------------------------------------------------------------------------------- plan and cost
def state_of(record: dict | None, opts: SweepOptions) -> str:
    """What the sweep will do with a run: ``new`` / ``rerun`` (run it) or ``done`` / ``busy`` / ``failed`` ...
    (skip it); the store's policy (:func:`~efficientft.store.skip_reason`), which :meth:`Store.claim` applies."""
    if record is None:
        return "new"
    why = skip_reason(record["status"], owner=record.get("worker"), retry_failed=opts.retry_failed,
                      reclaim=opts.reclaim)
    return "rerun" if why is None else "busy" if why == "running" else why


def _train_size(cfg, cache: dict) -> int | None:
    from ..tasks import DataOptions, get_task

    k = (cfg.task, cfg.data_dir, cfg.data_source, str(cfg.custom), cfg.selection_size, cfg.selection_max,
         cfg.data_seed)
    if k not in cache:
        try:
            train = get_task(cfg.task, cfg.custom).load("train", DataOptions(cfg.data_dir, cfg.data_source))
            if cfg.selection_size:
                train, _ = train.split_off(cfg.selection_size, cfg.data_seed, cfg.selection_max)
            cache[k] = len(train)
        except (ConfigError, OSError):
            cache[k] = None
    n = cache[k]
    return None if n is None else min(n, cfg.max_train or n)


def steps_of(cfg, cache: dict) -> int | None:
    if cfg.steps is not None:
        return cfg.steps
    n = _train_size(cfg, cache)
    if n is None:
        return None
    return max(1, math.ceil(cfg.epochs * math.ceil(n / cfg.batch_size) / cfg.grad_accum))


# What makes two runs' steps cost alike; the task too: a step's cost is its tokens (RTE's sentence pairs are six
# times CoLA's sentences at the same batch size).
_LIKE = ("task", "model", "method", "targets", "batch_size", "max_length", "precision", "grad_accum")


def _timing(cfg, done: list[dict], suite: Suite) -> tuple[float | None, float, str]:
    """(seconds per step, set-up + evaluation seconds per run, where the figures come from)."""
    def like(r: dict) -> bool:
        c = r["config"]
        return all(c.get(k) == getattr(cfg, k) for k in _LIKE)
    def per_step(cost: dict) -> float | None:  # training seconds per step (the median step misses the slow ones)
        if cost.get("train_s") and cost.get("total_steps"):
            return cost["train_s"] / cost["total_steps"]
        return cost.get("median_step_s")

    same = [r for r in done if like(r) and per_step(r.get("cost") or {})]
    if same:
        step = statistics.median(per_step(r["cost"]) for r in same)
        over = statistics.median(max(0.0, r["cost"].get("wall_s", 0) - r["cost"].get("train_s", 0)) for r in same)
        return step, over, f"store ({len(same)} like runs)"
    step_s = suite.estimate.get("step_s")
    if isinstance(step_s, dict):
        step_s = step_s.get(cfg.task)
    if step_s:
        return step_s, suite.estimate.get("overhead_s", 0.0), "suite estimate"
    return None, 0.0, "unknown"


def plan(suite: Suite, store: Store | None, opts: SweepOptions) -> dict[str, Any]:
    """The runs, what happens to each, and the estimated cost (optimizer steps; seconds where a timing is
    known: like runs in the store, else the suite's ``estimate``). ``store`` is only read (None: no store yet)."""
    runs = suite.expand(opts.env)
    done = store.runs("done") if store is not None else []
    rows, cache, timing = [], {}, {}
    for r in runs:
        state = state_of(store.get(r.key) if store is not None else None, opts)
        steps = steps_of(r.cfg, cache)
        tk = tuple(getattr(r.cfg, k) for k in _LIKE)
        if tk not in timing:
            timing[tk] = _timing(r.cfg, done, suite)
        step_s, over_s, basis = timing[tk]
        est = steps * step_s + over_s if steps is not None and step_s is not None else None
        rows.append({"run": r, "state": state, "steps": steps, "est_s": est, "basis": basis})
    todo = [x for x in rows if x["state"] in ("new", "rerun")]
    out = {"suite": suite.name, "runs": rows, "planned": len(rows), "to_run": len(todo),
           "steps_to_run": sum(x["steps"] or 0 for x in todo),
           "unknown_steps": sum(x["steps"] is None for x in todo),
           "est_s": sum(x["est_s"] or 0 for x in todo), "unknown_time": sum(x["est_s"] is None for x in todo),
           "states": _count(x["state"] for x in rows)}
    if suite.early_stopping and opts.early_stopping:
        out["early_stopping"] = halving_cost(suite, runs)
    if suite.search is not None:
        from .search import search_cost

        def run_timing(r: PlannedRun) -> tuple[float | None, float]:
            step_s, over_s, _ = timing.get(tuple(getattr(r.cfg, k) for k in _LIKE)) or _timing(r.cfg, done, suite)
            return step_s, over_s

        out["search"] = search_cost(suite, runs, run_timing)
    return out


def halving_cost(suite: Suite, runs: list[PlannedRun]) -> dict[str, int]:
    """Optimizer steps of successive halving vs the full grid, before running (every candidate survives with
    its seeds; ties and failures aside)."""
    es = suite.early_stopping
    groups = _groups(suite, runs)
    sh = full = 0
    for cands in groups.values():
        n = len(cands)
        seeds = max(len(v) for v in cands.values())
        budget = next(iter(cands.values()))[0].cfg.steps
        full += n * seeds * budget
        alive = n
        for b in es.rungs:
            sh += alive * seeds * b
            alive = max(1, math.floor(alive / es.reduction_factor))
        sh += alive * seeds * budget
    return {"steps_early_stopping": sh, "steps_full_grid": full}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _groups(suite: Suite, runs: list[PlannedRun]) -> dict[str, dict[tuple, list[PlannedRun]]]:
    over = suite.selection.over if suite.selection else ("lr",)
    groups: dict[str, dict[tuple, list[PlannedRun]]] = {}
    for r in runs:
        groups.setdefault(r.tags["group"], {}).setdefault(over_values(r.cfg.to_dict(), over), []).append(r)
    return groups


# ---------------------------------------------------------------------------------------------- the sweep
def sweep(suite: Suite, store: Store, opts: SweepOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite; returns (and stores, in the ``sweeps`` table) a summary of what ran and what it chose."""
    runs = suite.expand(opts.env)  # every config validated before anything runs
    check_options(suite, opts)
    executor = make_executor(opts, store)
    summary: dict[str, Any] = {"suite": suite.name, "path": str(suite.path), "executor": executor.name,
                               "workers": opts.workers, "planned": len(runs), "outcomes": {}}
    sweep_id = store.add_sweep(suite.name, summary)
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    counter = {"n": 0}

    def on_result(out: Outcome) -> None:
        counter["n"] += 1
        outcomes.append(out)
        log(_line(out, counter["n"]))

    try:
        if suite.search is not None:
            from .search import run_search

            tune = None
            if executor.name == "ray":  # the same search on Ray Tune
                from .search_ray import tune_trials as tune
            summary["search"] = run_search(suite, runs, store, executor, on_result, log, tune)
        elif suite.early_stopping and opts.early_stopping:
            summary["early_stopping"] = _successive_halving(suite, runs, store, executor, on_result)
        else:
            executor.run([item(r) for r in runs], on_result)
    except BaseException:
        executor.close(abort=True)
        raise
    executor.close()
    summary["wall_s"] = time.perf_counter() - t0
    summary["outcomes"] = _count(o["status"] if o["status"] != "skipped" else f"skipped ({o['reason']})"
                                 for o in outcomes)
    summary["steps_trained"] = sum(o.get("steps") or 0 for o in outcomes if o["status"] != "skipped")
    summary["failed"] = [{"key": o["key"], "run": o.get("describe"), "error": (o.get("error") or "")[:500]}
                         for o in outcomes if o["status"] in ("failed", "diverged")]
    if suite.selection and suite.search is None:  # over every full-budget run of the suite in the store (with early stopping: survivors,
        # plus the rest of the full grid if it was run too)
        records = [r for r in (store.get(x.key) for x in runs) if r is not None]
        summary["selection"] = {conv: select(records, suite.selection.select_by, suite.selection.over, conv)
                                for conv in ("selection", "best_dev")}
    store.update_sweep(sweep_id, summary)
    summary["sweep_id"] = sweep_id
    return summary


def _line(out: Outcome, n: int) -> str:
    what = out.get("describe") or out["key"]
    if out["status"] == "skipped":
        return f"[{n}] skipped ({out['reason']}): {what}"
    score = out.get("main_score")
    scored = f" {out.get('main_metric')}={score:.4f}" if isinstance(score, float) else ""
    err = f" — {(out.get('error') or '').splitlines()[0][:200]}" if out["status"] != "done" else ""
    return f"[{n}] {out['status']}{scored} ({out.get('wall_s', 0):.0f} s): {what}{err}"


def _successive_halving(suite: Suite, runs: list[PlannedRun], store: Store, executor,
                        on_result: Callable[[Outcome], None]) -> dict[str, Any]:
    es, sel = suite.early_stopping, suite.selection
    groups = _groups(suite, runs)
    alive = {g: list(c) for g, c in groups.items()}
    history: dict[str, list[dict]] = {g: [] for g in groups}
    steps_sh = 0
    keys_sh: list[str] = []
    for rung, budget in enumerate(es.rungs):
        batch = []
        for g, cands in alive.items():
            for c in cands:
                for r in groups[g][c]:
                    cfg = r.cfg.replace(steps=budget)
                    tags = {**r.tags, "rung": rung, "budget": budget}
                    batch.append(PlannedRun(cfg, run_key(cfg), tags, r.where))
        executor.run([item(r) for r in batch], on_result)
        steps_sh += len(batch) * budget
        keys_sh += [r.key for r in batch]
        by_key = {r.key: store.get(r.key) for r in batch}
        for g, cands in alive.items():
            scores, metric = {}, _selection_metric(None, sel.select_by)
            for c in cands:
                vals = []
                for r in groups[g][c]:
                    rec = by_key.get(run_key(r.cfg.replace(steps=budget)))
                    vals.append(_selection_score(rec, sel.select_by))
                    metric = _selection_metric(rec, sel.select_by) if rec is not None else metric
                ok = [v for v in vals if v is not None]
                scores[c] = statistics.fmean(ok) if ok else None
            kept = halving(scores, es.reduction_factor, metric)
            history[g].append({"rung": rung, "budget": budget,
                               "scores": [{"values": dict(zip(sel.over, c, strict=True)), "score": s}
                                          for c, s in scores.items()],
                               "kept": [dict(zip(sel.over, c, strict=True)) for c in kept]})
            alive[g] = kept
    final = [r for g, cands in alive.items() for c in cands for r in groups[g][c]]
    executor.run([item(r) for r in final], on_result)
    steps_sh += sum(r.cfg.steps for r in final)
    keys_sh += [r.key for r in final]
    full_keys = [r.key for r in runs]
    steps_full = sum(r.cfg.steps for r in runs)
    recs_sh = [store.get(k) for k in keys_sh]
    chosen_sh = {row["group"]: row["chosen"] for row in select([r for r in (store.get(x.key) for x in final) if r],
                                                               sel.select_by, sel.over)}
    full_records = [store.get(k) for k in full_keys]
    full_done = all(r is not None and r["status"] == "done" for r in full_records)
    out: dict[str, Any] = {
        "rungs": list(es.rungs), "reduction_factor": es.reduction_factor, "groups": history,
        "steps_early_stopping": steps_sh, "steps_full_grid": steps_full,
        "steps_saved_fraction": 1 - steps_sh / steps_full if steps_full else None,
        "wall_s_early_stopping": sum((r.get("cost") or {}).get("wall_s", 0) for r in recs_sh if r),
        "chosen": chosen_sh, "same_choice_as_full_grid": None,
    }
    if full_done:  # the full grid is in the store too: measure both
        chosen_full = {row["group"]: row["chosen"] for row in select(full_records, sel.select_by, sel.over)}
        out["chosen_full_grid"] = chosen_full
        out["same_choice_as_full_grid"] = {g: chosen_full.get(g) == chosen_sh.get(g) for g in chosen_sh}
        out["wall_s_full_grid"] = sum((r.get("cost") or {}).get("wall_s", 0) for r in full_records)
    return out


def _selection_metric(rec: dict | None, by: str) -> str:
    """The score a run is chosen by: ``selection/<its main metric>``, or the one ``select_by`` names."""
    main = ((rec or {}).get("main_metric") or "dev/accuracy").split("/", 1)[1]
    return f"selection/{main}" if by == "main" else by


def _selection_score(rec: dict | None, by: str) -> float | None:
    if rec is None or rec["status"] != "done":
        return None
    v = (rec.get("scores") or {}).get(_selection_metric(rec, by))
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
