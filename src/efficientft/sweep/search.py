"""Equal-budget tuning on Optuna: a suite's ``search:`` block (on a Ray cluster, Ray Tune: :mod:`.search_ray`).

For each configuration of the suite (an entry's grid cell without the searched fields and the seed: method ×
targets × λ × task), one Optuna study samples ``trials`` hyperparameter sets — the learning rate always
(log-uniform over the method's ``lr_prior`` unless the space gives ``lr``) and the fields the space declares — with
a TPE sampler, and prunes them with Optuna's ``SuccessiveHalvingPruner`` (Jamieson & Talwalkar 2016; ASHA, Li et
al. 2018) at the rungs ``min_steps · η^k`` below the full budget. Every configuration gets the same number of
trials, rungs and full budget.

A trial's rung is a stored run of its own with ``steps`` = the rung's budget, trained from scratch (its schedule
decays over its own length: an honest short run, the same rule as the sweep's ``early_stopping``), scored on the
selection split carved from train; its score is reported to the pruner at that step. Rung runs go through the
sweep's executor, so each is a run in the results store (key, provenance, curves) tagged ``search``, ``trial``,
``rung``. Selection reads only ``selection/<metric>`` (direction: :func:`efficientft.vocab.higher_is_better`);
the chosen set is re-run with ``final_seeds`` new seeds at the full budget, tagged ``search_final``, and reported
on the official dev split.

Resumable: the studies live in ``<store>.optuna.sqlite`` beside the results store. The sampler is seeded by the
search's seed and the number of finished trials, so a resumed search samples what an uninterrupted one would; a
trial left running by a killed search is marked failed (``interrupted``) and not counted, and its replacement
samples the same values again and finds its finished rung runs done in the store. The sweep's ``early_stopping``
halving stays where it is: it halves a fixed grid synchronously, which Optuna's pruner (asynchronous, over sampled
trials) does not express more simply.

``halving: synchronous`` (the study suites') trains every trial's rung before any goes on, and promotes the best
``max(1, ⌊n/η⌋)`` (:func:`_synchronous`): exactly successive halving's cost, where the asynchronous pruner lets the
early trials of a rung through with nothing to compare them to (in a search of 8 trials, 3 reached the full budget
where 1 is expected). Below TPE's 10 start-up trials the samples are random either way, so nothing is lost there.

``sampler: halton`` (the study suites') makes the trials the points of a scrambled Halton sequence over the space
(:func:`design`), spread evenly where a few random draws may bunch; a resumed search asks the points no counted
trial has taken.

With ``--workers N`` the configurations are searched side by side, N at a time (:func:`side_by_side`), each
driving its own study, on N one-process lanes shared by all (:class:`Trainer`): a run takes any free lane, and the
runs that do not wait on each other — a synchronous rung's trials, a choice's final seeds — train at once, so the
lanes stay busy when fewer configurations than lanes are left. An asynchronous configuration's trials stay
sequential (TPE samples each from the ones before it). Every configuration samples, prunes and chooses exactly what
a one-at-a-time search would.

With ``--executor ray`` the same search runs through Ray Tune (:mod:`.search_ray`): the same space, trials,
rungs, metric and runs (:func:`trial_run` builds a rung's run for both), the same choice and final re-runs
(:func:`_final` reads the :class:`Trial` records either engine returns).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..resolve import run_key
from ..store import Store
from ..vocab import higher_is_better
from .expand import apply_params, item, takes
from .suite import PlannedRun, Suite

COUNTED = ("COMPLETE", "PRUNED", "FAIL")  # a failed trial counts (the same values fail the same way) unless it
INTERRUPTED = "interrupted"  # was left running by a killed search (user attribute): then it is replaced


def optuna_or_error():
    try:
        import optuna
    except ImportError:
        raise ConfigError("a suite's search: block needs Optuna: pip install 'efficientft[search]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_path(store: Store) -> Path:
    p = Path(store.path)
    return p.with_name(p.stem + ".optuna.sqlite")


def tune_path(store: Store) -> Path:
    """Where Ray Tune keeps its experiments (:mod:`.search_ray`): ``<store>.raytune/`` beside the store."""
    p = Path(store.path).resolve()
    return p.with_name(p.stem + ".raytune")


def rungs_of(search, steps: int, task: str) -> list[int]:
    """The rung budgets below the full ``steps`` of ``task``: ``min_steps · η^k`` (Optuna's successive-halving
    rungs; ``min_steps`` may be given per task). The default first rung is ⌈steps / η²⌉, so that the rungs are
    steps/η², steps/η and nothing just below the full budget (⌊1000 / 9⌋ = 111 would give 111, 333 and 999: a third
    rung that costs as much as the full one)."""
    first = search.first_rung(task) or max(1, math.ceil(steps / search.reduction_factor ** 2))
    out, b = [], first
    while b < steps:
        out.append(b)
        b *= search.reduction_factor
    return out


def search_cost(suite: Suite, runs: list[PlannedRun], timing: Callable[[PlannedRun], tuple[float | None, float]]
                | None = None) -> dict[str, Any]:
    """Optimizer steps of the search before running: at most (every trial through every rung), as successive
    halving expects (1/η of the trials go on at each rung; Optuna's asynchronous pruner lets a few more through:
    the early trials of a rung have nothing to lose to; ``halving: synchronous``: exactly ``max(1, ⌊n/η⌋)``), and
    the final re-runs. ``timing``: a configuration's
    (seconds per step, seconds per run besides its steps), to give the same in CPU-seconds (None where unknown)."""
    se = suite.search
    groups = {r.tags["group"]: r for r in runs}
    out: dict[str, Any] = {"configurations": len(groups), "trials": se.trials * len(groups),
                           "steps_trials_at_most": 0, "steps_trials_expected": 0, "steps_final": 0,
                           "seconds_trials_at_most": 0.0, "seconds_trials_expected": 0.0, "seconds_final": 0.0,
                           "unknown_time": 0}
    for r in groups.values():
        budgets = [*rungs_of(se, r.cfg.steps, r.cfg.task), r.cfg.steps]
        going = [se.trials / se.reduction_factor ** k for k in range(len(budgets))]  # trials reaching each rung
        if se.halving == "synchronous":  # exactly: :func:`survivors` go on from each rung
            going = [float(se.trials)]
            for _ in budgets[1:]:
                going.append(float(survivors(int(going[-1]), se.reduction_factor)))
        at_most = (se.trials * sum(budgets), se.trials * len(budgets))  # (steps, runs)
        expected = (sum(n * b for n, b in zip(going, budgets, strict=True)), sum(going))
        final = (se.final_seeds * r.cfg.steps, se.final_seeds)
        out["steps_trials_at_most"] += at_most[0]
        out["steps_trials_expected"] += round(expected[0])
        out["steps_final"] += final[0]
        step_s, over_s = timing(r) if timing is not None else (None, 0.0)
        if step_s is None:
            out["unknown_time"] += 1
            continue
        for k, (steps, n) in (("at_most", at_most), ("expected", expected), ("final", final)):
            key = f"seconds_trials_{k}" if k != "final" else "seconds_final"
            out[key] += steps * step_s + n * over_s
    return out


def metric_of(suite: Suite, cfg) -> str:
    from ..tasks import get_task

    by = suite.selection.select_by
    return f"selection/{get_task(cfg.task, cfg.custom).main_metric}" if by == "main" else by


def space_of(suite: Suite, cfg, entry: int | None = None) -> dict[str, dict[str, Any]]:
    """The distributions a configuration samples: ``lr`` (the method's prior unless the suite gives it) first, then
    the suite's space and the method entry's own ``search:`` fields."""
    from ..methods import METHODS

    low, high = METHODS.get(cfg.method).lr_prior
    space = {"lr": {"float": [low, high], "log": True}}
    own = suite.space_for(entry) if entry is not None else suite.search.space
    space.update({k: v for k, v in own.items() if takes(cfg, k)})
    return space


def distributions(optuna, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The space as Optuna distributions: what a study's trial (here) or Ray Tune's ``OptunaSearch`` samples."""
    out: dict[str, Any] = {}
    for name, d in space.items():
        if "choice" in d:
            out[name] = optuna.distributions.CategoricalDistribution(d["choice"])
        elif "int" in d:
            out[name] = optuna.distributions.IntDistribution(d["int"][0], d["int"][1], log=d["log"])
        else:
            out[name] = optuna.distributions.FloatDistribution(d["float"][0], d["float"][1], log=d["log"])
    return out


def design(space: dict[str, dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points spread over the space (``search: {sampler: halton}``): a scrambled Halton sequence
    (``scipy.stats.qmc.Halton``, seeded by the search's seed) mapped onto each dimension — uniform, or uniform in
    log for ``log: true``; whole numbers for ``int``; an equal share of [0, 1) per ``choice``. In one dimension the
    first 2^k points fall one in each 1/2^k of the range, where n random draws may bunch: 7 of the 8 learning rates
    of paper-claims' first search (seed 0, TPE's random start-up) fell in a third of LoRA's log-range 1e-4..3e-3.
    Every configuration with the same dimensions gets the same quantiles, as the random draws gave every one the
    same values."""
    from scipy.stats import qmc

    names = list(space)
    out = []
    for row in qmc.Halton(d=len(names), scramble=True, seed=seed).random(n):
        point: dict[str, Any] = {}
        for name, u in zip(names, row, strict=True):
            d = space[name]
            if "choice" in d:
                point[name] = d["choice"][min(int(u * len(d["choice"])), len(d["choice"]) - 1)]
            elif "int" in d:
                low, high = d["int"]
                x = math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low))) if d["log"] else \
                    low + u * (high + 1 - low)
                point[name] = int(min(max(math.floor(x), low), high))
            else:
                low, high = d["float"]
                point[name] = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if d["log"] else \
                    low + u * (high - low)
        out.append(point)
    return out


def unused(points: list[dict[str, Any]], used: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The design's points no counted trial has taken yet (one each), in the design's order."""
    left = list(points)
    for params in used:
        for i, p in enumerate(left):
            if p == params:
                del left[i]
                break
    return left


def _ask(optuna, study, suite: Suite, space: dict[str, dict[str, Any]], counted: list, n: int) -> list:
    """``n`` new trials: the design's next unused points (``sampler: halton``), or TPE's, seeded by the search's seed
    and the trials counted so far (a resumed search asks what an uninterrupted one would)."""
    se = suite.search
    if se.sampler == "halton":
        for params in unused(design(space, se.trials, se.seed), [dict(t.params) for t in counted])[:n]:
            study.enqueue_trial(params, skip_if_exists=False)
    else:
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(se, len(counted)))
    return [study.ask(distributions(optuna, space)) for _ in range(n)]


def sampler_seed(search, finished: int) -> int:
    """TPE's seed, by (the search's seed, finished trials): the same seed gives the same trials, resumed or not."""
    return search.seed * 1_000_003 + finished


def score_of(rec: dict | None, metric: str) -> float | None:
    if rec is None or rec["status"] != "done":
        return None
    v = (rec.get("scores") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _counted(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in COUNTED and not t.user_attrs.get(INTERRUPTED)]


@dataclass
class Trial:
    """A finished trial, as either engine (Optuna here, Ray Tune in :mod:`.search_ray`) reports it."""

    number: int
    state: str  # COMPLETE / PRUNED / FAIL
    params: dict[str, Any]
    value: float | None  # the full-budget selection score (COMPLETE only)
    steps: int  # optimizer steps spent: the scored rungs below the full budget, and the full budget if COMPLETE


def trial_run(suite: Suite, base: PlannedRun, params: dict[str, Any], number: int | None, rung: int, budget: int,
              metric: str) -> PlannedRun:
    """Rung ``rung`` of a trial: ``base`` with the sampled ``params`` and ``budget`` steps, tagged ``search``,
    ``trial``, ``rung`` (its key is the config's alone: both engines build the same runs from the same values).
    A value no rule accepts raises :class:`ConfigError`."""
    cfg = apply_params(base.cfg, params, steps=budget, score_official=False)  # judged on selection: dev unscored
    tags = {**base.tags, "search": suite.name, "trial": number, "rung": rung, "budget": budget,
            "full_steps": base.cfg.steps, "params": params, "metric": metric}
    return PlannedRun(cfg, run_key(cfg), tags, base.where)


def pruned_note(budget: int, metric: str, v: float) -> str:
    return f"pruned at {budget} steps ({metric} {v:.4f})"


def trial_line(suite: Suite, base: PlannedRun, number: int, params: dict[str, Any], note: str) -> str:
    shown = ", ".join(f"{n}={x:.3g}" if isinstance(x, float) else f"{n}={x}" for n, x in params.items())
    return f"search {suite.name}: trial {number} of {base.tags['label']} ({base.cfg.task}): {shown} -> {note}"


def run_search(suite: Suite, runs: list[PlannedRun], store: Store, executor, on_result: Callable,
               log: Callable[[str], None], tune: Callable | None = None) -> dict[str, Any]:
    """Search every configuration of ``runs`` (the suite expanded), then re-run each choice; returns the summary.
    The trials run on Optuna in this process, or on Ray Tune with ``tune`` (:func:`.search_ray.tune_trials`,
    given by the runner with the Ray executor)."""
    se = suite.search
    on_ray = tune is not None
    where = str(tune_path(store)) if on_ray else str(storage_path(store))
    groups: dict[str, PlannedRun] = {}
    for r in runs:  # one configuration per group; its first run (file order) gives the trials' seed
        groups.setdefault(r.tags["group"], r)
    out: dict[str, Any] = {"name": suite.name, "storage": where, "engine": "ray-tune" if on_ray else "optuna",
                           "trials": se.trials, "seed": se.seed, "reduction_factor": se.reduction_factor,
                           "configurations": []}

    lanes = (executor.lanes() if not on_ray and hasattr(executor, "lanes")
             and (executor.workers > 1 or executor.fresh_process) else None)
    if lanes is not None:  # the drivers' and lanes' threads report through one lock
        on_result, log = serialised(on_result), serialised(log)
    trainer = Trainer(store, on_result, executor, lanes)
    if on_ray:
        def trials_of(base: PlannedRun, metric: str, maximise: bool) -> list[Trial]:
            return tune(suite, base, metric, maximise, store, executor, on_result, log)
    else:
        optuna = optuna_or_error()
        storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path(store)}")

        def trials_of(base: PlannedRun, metric: str, maximise: bool) -> list[Trial]:
            return _optuna_trials(optuna, storage, suite, base, metric, maximise, trainer, log)

    def configuration(base: PlannedRun) -> dict[str, Any]:
        metric = metric_of(suite, base.cfg)
        maximise = higher_is_better(metric)
        return _final(suite, base, trials_of(base, metric, maximise), metric, maximise, trainer, log)

    if lanes is None:
        out["configurations"] = [configuration(base) for base in groups.values()]
    else:
        out["configurations"] = side_by_side(list(groups.values()), trainer, configuration)
    from ..report.search_plot import tuning_budget

    stem = Path(store.path).stem
    out["plot"] = [str(p) for p in tuning_budget([r for r in store.runs() if (r.get("tags") or {}).get("search")
                                                   == suite.name], Path(store.path).parent, f"{stem}.{suite.name}")]
    return out


def serialised(fn: Callable) -> Callable:
    import threading

    lock = threading.Lock()

    def one_at_a_time(*args: Any) -> Any:
        with lock:
            return fn(*args)
    return one_at_a_time


class Trainer:
    """Trains a search's runs and returns their records: one at a time on the sweep's executor, or on lanes
    (``--workers N`` or ``--fresh-process``: :meth:`LocalPool.lanes <.executors.LocalPool.lanes>`), where the next
    run takes any free lane and :meth:`many` trains independent runs at once (a synchronous rung's trials, a
    choice's final seeds), so no lane waits while another configuration has runs to give it.

    A run whose cost is not compared (``measured=False``: a trial, scored on the selection split and never a row of
    a table) takes its lane's :meth:`reusing <.executors.LocalPool.reusing>` pool: with ``--fresh-process`` its
    worker runs the configuration's trials one after another, and the final seeds, whose costs the report and the
    leaderboard compare, each get a fresh process. A lane runs one worker process at a time: the pool it does not
    use is closed first (on a GPU an idle worker would hold device memory the measured run then lacks)."""

    def __init__(self, store: Store, on_result: Callable, executor, lanes: list | None = None) -> None:
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self.store, self.on_result, self.executor, self.lanes = store, on_result, executor, lanes
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._pairs = [(lane, lane.reusing()) for lane in lanes or []]  # (measured runs, trials)
        for pair in self._pairs:
            self._free.put(pair)
        # threads that live as long as the lanes: a lane's worker process dies with the thread that started it
        # (executors.py: PR_SET_PDEATHSIG is the parent *thread's* death), so no short-lived thread may start one
        self._threads = ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="search-run") if lanes else None

    def one(self, run: PlannedRun, measured: bool = True) -> dict | None:
        if self.lanes is None:
            self.executor.run([item(run)], self.on_result)
        else:
            pair = self._free.get()
            use, other = pair if measured else pair[::-1]
            try:
                if other is not use:
                    other.close()
                use.run([item(run)], self.on_result)
            finally:
                self._free.put(pair)
        return self.store.get(run.key)

    def many(self, runs: list[PlannedRun], measured: bool = True) -> list[dict | None]:
        if self._threads is None or len(runs) < 2:
            return [self.one(r, measured) for r in runs]
        return list(self._threads.map(lambda r: self.one(r, measured), runs))

    def close(self, abort: bool = False) -> None:
        for pool in {id(p): p for pair in self._pairs for p in pair}.values():
            pool.close(abort=abort)
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)


def side_by_side(bases: list[PlannedRun], trainer: Trainer, configuration: Callable) -> list[dict[str, Any]]:
    """Search the configurations ``bases`` side by side, as many at a time as there are lanes, each driving its own
    Optuna study and training on whichever lane is free; returns their rows in ``bases``' order. The studies are
    independent (each its own seeded sampler, pruner and trials), so every configuration samples, prunes and
    chooses what a one-at-a-time search would. Stopped (Ctrl-C, SIGTERM): every lane's runs are stopped and stored
    ``cancelled``, and each study's trials in flight are left running, replaced by the next search."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=len(trainer.lanes or [1]), thread_name_prefix="search-configuration")
    try:
        futures = [pool.submit(configuration, base) for base in bases]
        wait(futures, return_when=FIRST_EXCEPTION)  # one configuration's error stops the others now
        rows = [f.result() for f in futures]
    except BaseException:
        trainer.close(abort=True)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    trainer.close()  # before the threads end: a lane's worker started by one of them would die with it
    pool.shutdown()
    return rows


def _open_study(optuna, storage, suite: Suite, base: PlannedRun, maximise: bool, rungs: list[int],
                log: Callable[[str], None]):
    """The configuration's study (created, or loaded to resume), its trials left running by a killed search marked
    failed (``interrupted``: not counted, replaced)."""
    se = suite.search
    study = optuna.create_study(
        study_name=f"{suite.name}/{base.tags['group']}", storage=storage, load_if_exists=True,
        direction="maximize" if maximise else "minimize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=rungs[0] if rungs else base.cfg.steps,
                                                      reduction_factor=se.reduction_factor,
                                                      min_early_stopping_rate=0))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                      optuna.trial.TrialState.WAITING)):  # asked, or enqueued
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)  # left running by a killed search
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        log(f"search {suite.name}: trial {t.number} of {base.tags['label']} ({base.cfg.task}) was interrupted; "
            f"it is replaced")
    return study


def _trials(study, full: int) -> list[Trial]:
    return [Trial(t.number, t.state.name, dict(t.params), t.value,
                  sum(t.intermediate_values) + (full if t.state.name == "COMPLETE" else 0))
            for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(INTERRUPTED)]


def _optuna_trials(optuna, storage, suite: Suite, base: PlannedRun, metric: str, maximise: bool, trainer: Trainer,
                   log: Callable[[str], None]) -> list[Trial]:
    """One configuration's study: ask, train its rungs, tell, until ``trials`` are counted."""
    se = suite.search
    full = base.cfg.steps
    rungs = rungs_of(se, full, base.cfg.task)
    space = space_of(suite, base.cfg, base.tags.get("entry"))
    study = _open_study(optuna, storage, suite, base, maximise, rungs, log)
    if se.halving == "synchronous":
        return _synchronous(optuna, suite, base, metric, maximise, trainer, log, rungs, space, study)
    while len(done := _counted(study)) < se.trials:
        trial = _ask(optuna, study, suite, space, done, 1)[0]
        params = dict(trial.params)
        state, value, note = optuna.trial.TrialState.FAIL, None, "failed"
        for k, budget in enumerate([*rungs, full]):
            try:
                run = trial_run(suite, base, params, trial.number, k, budget, metric)
            except ConfigError as e:  # a sampled value no rule accepts: the trial fails, the search goes on
                note = f"failed: {e}"
                break
            v = score_of(trainer.one(run, measured=False), metric)
            if v is None:
                break
            if budget < full:
                trial.report(v, budget)
                if trial.should_prune():
                    state, note = optuna.trial.TrialState.PRUNED, pruned_note(budget, metric, v)
                    break
            else:
                state, value, note = optuna.trial.TrialState.COMPLETE, v, f"{metric} {v:.4f}"
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        log(trial_line(suite, base, trial.number, params, note))
    return _trials(study, full)


def survivors(n: int, eta: int) -> int:
    """How many of ``n`` trials scored at a rung go on under synchronous halving: ``max(1, ⌊n / η⌋)``, the count
    Optuna's ``SuccessiveHalvingPruner`` keeps."""
    return max(1, n // eta)


def promoted(values: dict[int, float], others: dict[int, float], eta: int, maximise: bool) -> set[int]:
    """Synchronous successive halving's promotion at one rung: of every value scored there (``values``: this batch's
    trials, by number; ``others``: earlier trials'), the best ``max(1, ⌊n / η⌋)`` go on — the count Optuna's
    ``SuccessiveHalvingPruner`` keeps — where they are this batch's (ties: the lower trial number)."""
    every = {**others, **values}
    ranked = sorted(every, key=lambda num: (-every[num] if maximise else every[num], num))
    return {num for num in ranked[:survivors(len(every), eta)] if num in values}


def _synchronous(optuna, suite: Suite, base: PlannedRun, metric: str, maximise: bool, trainer: Trainer,
                 log: Callable[[str], None], rungs: list[int], space: dict[str, dict[str, Any]], study) -> list[Trial]:
    """Synchronous successive halving (``search: {halving: synchronous}``): the trials still to count are asked at
    once (:func:`_ask`: the design's unused points, or one TPE sampler seeded by the search's seed and the trials
    already counted; either way a search resumed before any of them was told asks them again and finds their rung
    runs done), every one trains the first rung, the best ``max(1, ⌊n/η⌋)`` go on to the next (:func:`promoted`;
    the others are told pruned), and so on to the full budget. Optuna's asynchronous pruner instead decides each trial alone when it reaches a rung, so the early trials,
    with nothing to lose to, go on: in a search of 8 trials three reached the full budget where one is expected.
    With TPE's default 10 start-up trials, a search of 10 trials or fewer samples every trial at random either way,
    so the synchronous schedule loses nothing of TPE's guidance there."""
    se = suite.search
    full = base.cfg.steps
    pruned, complete, failed = (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE,
                                optuna.trial.TrialState.FAIL)
    earlier = _counted(study)
    need = se.trials - len(earlier)
    if need <= 0:
        return _trials(study, full)
    alive = {t.number: (t, dict(t.params)) for t in _ask(optuna, study, suite, space, earlier, need)}
    for k, budget in enumerate([*rungs, full]):
        scores: dict[int, float] = {}
        runs, notes = {}, {}
        for num, (_, params) in alive.items():
            try:
                runs[num] = trial_run(suite, base, params, num, k, budget, metric)
            except ConfigError as e:  # a sampled value no rule accepts: the trial fails, the search goes on
                notes[num] = f"failed: {e}"
        records = dict(zip(runs, trainer.many(list(runs.values()), measured=False), strict=True))  # at once
        for num, (trial, params) in list(alive.items()):
            v = score_of(records.get(num), metric)
            if v is None:
                study.tell(trial, None, state=failed)
                log(trial_line(suite, base, num, params, notes.get(num, "failed")))
                del alive[num]
            else:
                scores[num] = v
        if budget == full:
            for num, v in scores.items():
                study.tell(alive[num][0], v, state=complete)
                log(trial_line(suite, base, num, alive[num][1], f"{metric} {v:.4f}"))
            break
        for num, v in scores.items():
            alive[num][0].report(v, budget)
        others = {t.number: t.intermediate_values[budget] for t in earlier if budget in t.intermediate_values}
        going = promoted(scores, others, se.reduction_factor, maximise)
        for num, v in scores.items():
            if num not in going:
                study.tell(alive[num][0], None, state=pruned)
                log(trial_line(suite, base, num, alive[num][1], pruned_note(budget, metric, v)))
                del alive[num]
    return _trials(study, full)


def _final(suite: Suite, base: PlannedRun, trials: list[Trial], metric: str, maximise: bool, trainer: Trainer,
           log: Callable[[str], None]) -> dict[str, Any]:
    """The chosen set (best full-budget selection score) re-run with ``final_seeds`` new seeds, scored on dev."""
    se = suite.search
    complete = [t for t in trials if t.state == "COMPLETE"]
    row: dict[str, Any] = {
        "group": base.tags["group"], "label": base.tags["label"], "task": base.cfg.task, "method": base.cfg.method,
        "chosen_by": metric, "trials": {s: sum(t.state == s for t in trials) for s in COUNTED},
        "steps_spent": sum(t.steps for t in trials),
        "chosen": None, "selection_score": None, "final": [],
    }
    if not complete:
        log(f"search {suite.name}: no trial of {base.tags['label']} ({base.cfg.task}) finished; nothing to re-run")
        return row
    best = (max if maximise else min)(complete, key=lambda t: t.value)
    row["chosen"], row["selection_score"], row["trial"] = dict(best.params), best.value, best.number
    main = f"dev/{metric.split('/', 1)[1]}"
    scores, finals = [], []
    for i in range(se.final_seeds):  # new seeds: the final runs are independent of the seed the trials used
        cfg = apply_params(base.cfg, best.params, seed=base.cfg.seed + 1 + i)
        tags = {**base.tags, "search_final": suite.name, "trial": best.number, "params": dict(best.params),
                "chosen_by": metric}
        finals.append(PlannedRun(cfg, run_key(cfg), tags, base.where))
    for run, rec in zip(finals, trainer.many(finals), strict=True):  # the seeds at once, on lanes
        v = score_of(rec, main)
        row["final"].append({"key": run.key, "seed": run.cfg.seed, main: v})
        if v is not None:
            scores.append(v)
    row["reported_on"] = main
    row["mean"] = statistics.fmean(scores) if scores else None
    row["std"] = statistics.stdev(scores) if len(scores) > 1 else None
    return row
