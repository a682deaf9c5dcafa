"""The one training loop, for every method: set-up → train → evaluate → record.

Read top to bottom: :func:`run` resolves everything that can fail on bad input *before* the first step (task,
method, data, model, targets), then trains with AdamW (or the method's optimizer), a warm-up + decay schedule,
gradient accumulation, clipping and autocast, evaluating every ``eval_every`` steps and at the end. Methods act
only through the hooks of :class:`~efficientft.methods.base.Method`.
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint, content, memory_model, provenance, sharding
from .checkpoint import TrainState
from .config import DEFAULT_EPOCHS, RunConfig
from .data import Encoded, TrainBatches
from .errors import AlreadyDone, ConfigError
from .features import FeatureCache
from .flops import FlopShape, flop_shape, speed_cost
from .meters import MemorySampler, PeakMemory, StepTimer
from .methods import get_method
from .methods.base import Context, Method, check_export_dir
from .methods.capabilities import check_model
from .models import ALL, describe, fingerprint, load_model, resolve_model, resolve_targets
from .models.large import enable_gradient_checkpointing
from .models.loading import LoadOptions
from .models.loading import check_max_length as check_positions
from .resolve import check_method, checked, resolve, run_key
from .runtime import Runtime, build_runtime, check_runtime, check_shards
from .step import MAX_SKIPPED_IN_A_ROW, Diverged, forward, optimizer_step  # noqa: F401 - forward: re-exported
from .store import Store
from .strategy import Strategy, check_ratios_applied, describe_groups
from .tasks import DataOptions, Examples, Task, get_task
from .trackers import Trackers, check_installed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _shard(batch: dict[str, torch.Tensor], accel: Any) -> dict[str, torch.Tensor]:
    if accel is None:
        return batch
    return {k: v.tensor_split(accel.num_processes)[accel.process_index] for k, v in batch.items()}


def _shard_indexed(idx: np.ndarray, batch: dict[str, torch.Tensor], accel: Any) -> tuple[np.ndarray, dict]:
    """This process's slice of a global batch and of its example indices (the same split as ``tensor_split``)."""
    if accel is None:
        return idx, batch
    return np.array_split(np.asarray(idx), accel.num_processes)[accel.process_index], _shard(batch, accel)


def schedule_fn(kind: str, warmup: int, total: int):
    """Learning-rate factor per step: linear warm-up, then linear / cosine decay to 0, or constant."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return f


@dataclass
class Prepared:
    """Everything set up for training, before the first step."""

    cfg: RunConfig
    task: Task
    method: Method
    model: nn.Module
    tokenizer: Any
    runtime: Runtime
    train: Encoded
    evals: dict[str, Encoded]
    total_steps: int
    groups: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    base_params: int
    info: dict[str, Any] = field(default_factory=dict)
    features: FeatureCache | None = None
    resume: TrainState | None = None  # the checkpoint this run continues from
    # what the task kind's evaluation leaves behind: the last predictions per split (generation: one row per
    # example) and its cost figures (generation_s, generated_tokens), recorded apart from training time
    predictions: dict[str, list[dict]] = field(default_factory=dict)
    eval_cost: dict[str, float] = field(default_factory=dict)
    kind_state: dict[str, Any] = field(default_factory=dict)  # the kind's own working state (not recorded)
    inputs: dict[str, Any] = field(default_factory=dict)  # the content of what it read (kept in its checkpoints)
    flop_shape: FlopShape | None = None  # what its model FLOPs are counted from (before sharding splits it)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def batches(self) -> TrainBatches:
        return TrainBatches(self.train, self.cfg.batch_size, self.info["pad_id"], self.cfg.seed, self.cfg.bucket)


def load_data(task: Task, cfg: RunConfig) -> tuple[Examples, dict[str, Examples]]:
    """The training split (seeded subsample, minus a carved selection split) and the evaluation splits."""
    opts = DataOptions(cfg.data_dir, cfg.data_source, cfg.train_data)
    train = task.load("train", opts)
    evals: dict[str, Examples] = {}
    if cfg.selection_size:
        train, selection = train.split_off(cfg.selection_size, cfg.data_seed)
        evals["selection"] = selection.sample(cfg.max_eval, cfg.data_seed)
    train = train.sample(cfg.max_train, cfg.data_seed)
    for split in task.eval_splits:
        evals[split] = task.load(split, opts).sample(cfg.max_eval, cfg.data_seed)
    for name, ex in [("train", train), *evals.items()]:
        if len(ex) == 0:
            raise ConfigError(f"the {name} split of task {task.name!r} is empty after reading and filtering.")
    return train, evals


def check_inputs(configs: list[RunConfig]) -> list[str]:
    """Read every distinct data set and find every model the configs name, without loading weights.

    A sweep calls this before its first run, so that a missing file or column fails in seconds, not after hours of
    other runs. Returns one message per problem (empty: all inputs are there).
    """
    problems: dict[str, str] = {}
    seen: set[str] = set()
    for cfg in configs:
        data = (cfg.task, repr(cfg.custom), cfg.data_dir, cfg.data_source, cfg.train_data, cfg.selection_size,
                cfg.max_train, cfg.max_eval, cfg.data_seed)
        for what, check in ((repr(data), lambda c=cfg: load_data(get_task(c.task, c.custom), c)),
                            (f"model {cfg.model}", lambda c=cfg: resolve_model(c.model))):
            if what in seen:
                continue
            seen.add(what)
            try:
                check()
            except ConfigError as e:
                problems.setdefault(str(e), f"{cfg.task} / {cfg.model}: {e}")
    return list(problems.values())


def prepare(cfg: RunConfig, runtime: Runtime | None = None, resume: TrainState | None = None) -> Prepared:
    """Validate and set up a run; every bad-input error is raised here, before any training.

    ``runtime``: the one :class:`Runtime` of the run (:func:`run` builds it once); built from ``cfg`` if not given.
    ``resume``: a checkpoint of this run; the method's own state is restored from it instead of being computed
    from data again (``init_from_data`` does not run), the rest when training starts (:func:`train`).
    """
    t0 = time.perf_counter()
    cfg = checked(cfg)  # what needs tasks, data and the strategy (done already if resolved; prepare may get a raw one)
    check_installed(cfg.tracker)
    if cfg.export_dir:  # a used folder fails now, not after training
        check_export_dir(cfg.export_dir, cfg.overwrite)
    if runtime is None:
        runtime = build_runtime(cfg)
    else:
        check_runtime(runtime, cfg)
    device = runtime.device
    task = get_task(cfg.task, cfg.custom)
    kind = task.kind  # the loop asks the kind; it never tests which kind it is
    if cfg.feature_cache and not kind.supports_feature_cache:
        raise ConfigError(f"feature_cache does not work with {kind.name} tasks such as {task.name!r}: "
                          f"{kind.no_feature_cache_reason}; drop --feature-cache.")
    method_cls = get_method(cfg.method)
    method: Method = method_cls.from_config(cfg.method_args)
    check_method(cfg, method)  # targets, quantized base and λ against the method's declared capabilities
    kind.check_method(method)  # e.g. a method that declares it cannot train a generation task
    if runtime.sharded:
        sharding.check_config(cfg, method, runtime.precision)
    train_ex, eval_ex = load_data(task, cfg)

    seed_everything(cfg.seed)  # the head's random init depends on the seed only
    loaded = load_model(cfg.model, task.num_labels, LoadOptions.from_runtime(runtime, cfg.trust_remote_code), head=kind)
    model = loaded.model
    check_model(method, model, classifier=kind.peft_task_type == "SEQ_CLS")  # e.g. prefix tuning's cache argument
    if cfg.gradient_checkpointing:  # before the method wraps the model: every layer is checkpointed whole
        enable_gradient_checkpointing(model)
    base_params = sum(p.numel() for p in model.parameters())
    # a method that targets nothing (prompt-type, LayerNorm tuning) gets no targets: none is adapted or recorded
    targets = [] if cfg.targets == ALL or method.capabilities.targets == "none" else resolve_targets(model, cfg.targets)
    kind.check_max_length(cfg, loaded.tokenizer, train_ex)
    # a longer input fails at the first step
    check_positions(cfg.max_length, model.config, cfg.model, method.extra_positions(), cfg.method)
    train = kind.encode(task, train_ex, loaded.tokenizer, cfg, model, "train")
    evals = {k: kind.encode(task, v, loaded.tokenizer, cfg, model, k) for k, v in eval_ex.items()}
    check_shards(len(train), cfg.batch_size, runtime.num_processes)  # no process may get an empty batch

    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.steps or max(1, math.ceil((cfg.epochs or DEFAULT_EPOCHS) * per_epoch / cfg.grad_accum))
    ctx = Context(heads=kind.heads(model), total_steps=total, num_labels=task.num_labels, seed=cfg.seed,
                  base_model=loaded.path, peft_task_type=kind.peft_task_type, max_length=cfg.max_length)
    inputs = read_inputs(cfg, loaded.path, train_ex, eval_ex)
    if resume is not None and not_resumed(resume, inputs_changed(resume, inputs)):
        resume = None
    torch.manual_seed(cfg.seed)  # adapter initialisation depends on the seed only
    try:
        model = method.prepare(model, targets, ctx).to(device)
    except (MemoryError, RuntimeError) as e:  # sizes that do not fit (a rank of 10**8): one line, not a traceback
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        args = ", ".join(f"{k}={v}" for k, v in method.args_dict().items()) or "its defaults"
        size = re.search(r"[Tt]ried to allocate (\d+) bytes", str(e))
        what = f"one tensor of {int(size.group(1)) / 2**30:,.1f} GiB" if size else "its adapters"
        raise ConfigError(f"method {cfg.method!r} ({args}) ran out of memory allocating {what} on this model; "
                          "choose smaller sizes.") from None
    pad_id = loaded.tokenizer.pad_token_id
    batches = TrainBatches(train, cfg.batch_size, pad_id, cfg.seed, cfg.bucket)
    if resume is not None:
        if not_resumed(resume, method_state_misfit(method, model, resume)):  # the method's state is half restored:
            return prepare(cfg, runtime)  # prepare again, from scratch
    else:
        method.init_from_data(model, ({k: v.to(device) for k, v in b.items()} for b in batches.forever()))
    shape = flop_shape(model)
    if runtime.sharded:  # before the optimizer exists: it must hold the sharded parameters
        model = sharding.shard(model, runtime)
    groups = method.param_groups(model, Strategy(cfg.role_ratios), cfg.lr, cfg.weight_decay)
    if not groups:
        raise ConfigError(f"method {cfg.method!r} with targets {cfg.targets!r} left no parameter to train.")
    check_ratios_applied(groups, cfg.role_ratios, cfg.method, cfg.targets, from_lr_ratio=cfg.lr_ratio != 1.0)
    optimizer = method.optimizer(groups, cfg.lr, cfg.weight_decay)
    warmup = int(round(cfg.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg.schedule, warmup, total))
    info = {
        "model_path": loaded.path, "is_decoder": loaded.is_decoder,
        "pad_id": pad_id, "warmup_steps": warmup, "epochs": total * cfg.grad_accum / per_epoch,
        "targets": [{"module": t.name, "role": t.role, "rows": t.out_slice} for t in targets],
        "train_examples": len(train), "eval_examples": {k: len(v) for k, v in evals.items()},
        "data_files": sorted({f for ex in [train_ex, *eval_ex.values()] for f in ex.files}),
        "skipped_rows": sum(ex.skipped_rows for ex in [train_ex, *eval_ex.values()]),
        "model": describe(model), "task_kind": kind.name,
    }
    encoding = {k: e.stats for k, e in [("train", train), *evals.items()] if e.stats}
    if encoding:  # e.g. how many examples the cutoff length truncated, per split
        info["encoding"] = encoding
    if runtime.sharded:
        info["sharding"] = sharding.describe(model, runtime)
    features = None
    if cfg.feature_cache:
        features = FeatureCache(model, runtime.autocast)
        for name, enc in [("train", train), *evals.items()]:
            features.add_split(name, enc, pad_id)
        features.check("train")  # a model or method the cache cannot serve fails here, before training
        info["feature_cache"] = {"layers": features.list_name, "first_trained_layer": features.k}
    prepared = Prepared(cfg, task, method, model, loaded.tokenizer, runtime, train, evals, total, groups, optimizer,
                        scheduler, base_params, info, features, resume, inputs=inputs, flop_shape=shape)
    kind.before_training(prepared)  # e.g. the LM loss on held-out text before any step (the forgetting baseline)
    info["setup_s"] = time.perf_counter() - t0
    return prepared


def read_inputs(cfg: RunConfig, model_path: str, train_ex: Examples, eval_ex: dict[str, Examples]) -> dict[str, Any]:
    """What the run read, by content: the model folder's config and weights, the files of each data split (the
    GLUE folder, ``--train-data``, the user's files), the forgetting file; the checkpoint keeps it."""
    inputs: dict[str, Any] = {"model": content.folder_sha256(model_path) or model_path}
    for split, ex in [("train", train_ex), *eval_ex.items()]:
        inputs[f"{split} data"] = content.fingerprint(ex.files)
    if cfg.forgetting_file:
        inputs["forgetting file"] = content.file_sha256(cfg.forgetting_file) or cfg.forgetting_file
    return inputs


def method_state_misfit(method: Method, model: nn.Module, resume: TrainState) -> str:
    """Restore the method's own state from ``resume`` (its ranks and chosen entries shape the trainable weights),
    then say why the checkpoint does not fit the prepared model ("": it fits)."""
    try:
        method.load_state_dict(model, resume.blobs["method"])
    except Exception as e:  # noqa: BLE001 - a state this code cannot load is a checkpoint that does not fit
        return f"its {method.name} state does not load ({type(e).__name__}: {e})"
    misfits = resume.misfits(model)
    return f"it does not fit this run's model (its trainable weights differ: {', '.join(misfits[:3])})" if misfits else ""


def inputs_changed(resume: TrainState, inputs: dict[str, Any]) -> str:
    """Which inputs differ from those ``resume`` trained on, in words ("": the same)."""
    if resume.inputs is None:
        print(f"note: checkpoint {resume.path} predates input fingerprints; resuming without checking that the "
              f"model and data are the ones it trained on.", file=sys.stderr)
    changed = resume.changed_inputs(inputs)
    return f"it was saved from other inputs: the {', the '.join(changed)} changed since" if changed else ""


def not_resumed(resume: TrainState, why: str) -> bool:
    """Say in one line why ``resume`` is not resumed (``why``: empty when it is) and that the run starts over; the
    checkpoint is then replaced, never resumed onto other inputs or left to fail every rerun."""
    if why:
        print(f"note: checkpoint {resume.path} is not resumed, {why}; training from scratch.", file=sys.stderr)
    return bool(why)


def device_batches(p: Prepared, start: int = 0):
    """(example indices, batch on the device), epoch after epoch, from the ``start``-th batch on."""
    for idx, b in p.batches().indexed(start):
        yield idx, {k: v.to(p.device) for k, v in b.items()}


def evaluate(p: Prepared, split: str) -> dict[str, float]:
    """Scores of the current model on one evaluation split (the task kind says how it evaluates)."""
    return p.task.kind.evaluate(p, split)


def evaluate_all(p: Prepared) -> dict[str, float]:
    """Every split's scores as ``<split>/<metric>``, plus what the kind derives from them (a suite's average)."""
    scores = {f"{split}/{m}": v for split in p.evals for m, v in evaluate(p, split).items()}
    return {**scores, **p.task.kind.summarise(p, scores)}


def train(p: Prepared, store: Store | None = None, key: str = "", progress: bool = True,
          checkpoints: checkpoint.Checkpoints | None = None, trackers: Trackers | None = None) -> dict[str, Any]:
    """The loop. Returns scores, curves and timings; raises :class:`Diverged` on a non-finite loss.

    ``total_steps`` counts applied optimizer steps. Under fp16 a step the GradScaler skips (overflowing gradients)
    is tried again on the next batches, so the run still takes its whole schedule; the skipped attempts are timed
    (their work was done), returned as ``skipped_steps`` (the step each was an attempt at) and not in the curves.
    A non-finite *loss* is a divergence under every precision: loss scaling guards the backward pass, not the
    forward. Curves: ``loss`` is the step's mean over its examples, ``lr`` the rate the step used, ``grad_norm``
    the norm before clipping.

    With ``checkpoints`` the whole training state is saved every ``checkpoints.every`` steps (after that step's
    evaluation), and when SIGTERM or Ctrl-C arrives (at the end of the step under way, then the run stops as
    cancelled). A run prepared from a checkpoint (``p.resume``) continues from it exactly.
    """
    cfg, model, device, runtime = p.cfg, p.model, p.device, p.runtime
    scaler = runtime.grad_scaler()
    timer = StepTimer(device)
    state = p.resume or TrainState()
    state.inputs = p.inputs
    if p.resume is not None:
        state.restore(p, scaler)  # the RNG last: nothing below draws from it before the first step
        for name, value in state.counters.items():  # the cost figures count the whole run, every attempt
            if name != "train_s":
                setattr(timer, name, value)
        if store is not None:  # the store forgot the curve when this attempt started
            store.add_curves(key, [tuple(r) for r in state.curve])
    rows, evals, skipped = state.curve, state.evals, state.skipped
    flushed = len(rows)
    eval_s = eval_s0 = state.eval_s
    train_s0 = state.counters.get("train_s", 0.0)
    batches = device_batches(p, state.drawn)
    accel = runtime.accelerator
    main = runtime.is_main
    runner = model  # DDP: gradients averaged in backward; FSDP: the model is sharded (and averages) already
    if accel is not None and not runtime.sharded:
        runner = accel.prepare_model(model)
    evaluates = main or runtime.sharded  # a sharded model's forward needs every process (each gathers weights)
    bar = _progress(p, progress and main, state.step)
    ema = None
    model.train()
    t_train = time.perf_counter()
    step, in_a_row = state.step, 0
    tracked = trackers if trackers is not None else Trackers([], key, {}, Path("."))

    def save(rng: dict | None = None) -> Path:
        state.step, state.drawn, state.eval_s = step, drawn, eval_s
        state.counters = {n: getattr(timer, n) for n in ("tokens", "padded_tokens", "examples", "times",
                                                         "token_pairs", "longest_batch")}
        state.counters["train_s"] = train_s0 + time.perf_counter() - t_train - (eval_s - eval_s0)
        state.capture(p, scaler)
        if rng is not None:
            state.blobs["rng"] = rng
        state.trackers = tracked.run_ids()
        return checkpoints.save(state)

    drawn = state.drawn
    with checkpoint.deferred_interrupts(checkpoints is not None) as interrupted:
        while step < p.total_steps:
            timer.start()
            micro = [_shard_indexed(*next(batches), accel) for _ in range(cfg.grad_accum)]
            drawn += cfg.grad_accum
            for _, batch in micro:
                timer.tokens += int(batch["attention_mask"].sum())
                timer.padded_tokens += batch["attention_mask"].numel()
                timer.token_pairs += int((batch["attention_mask"].sum(1) ** 2).sum())
                timer.longest_batch = max(timer.longest_batch, batch["attention_mask"].numel())
                timer.examples += len(batch["labels"])
            try:
                result = optimizer_step(p, micro, step + 1, scaler, runner, accel)
            except Diverged as e:
                e.curve, e.skipped = rows[flushed:], skipped  # the curve so far is kept for diagnosis
                raise
            timer.stop()
            if result.skipped:
                skipped.append(step + 1)
                in_a_row += 1
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    e = Diverged(step + 1, result.loss, rows[flushed:],
                                 f"gradients were inf or NaN in {in_a_row} fp16 steps in a row at step {step + 1} "
                                 "(the GradScaler skipped them all)")
                    e.skipped = skipped
                    raise e
                if interrupted():
                    save()
                    raise KeyboardInterrupt
                continue
            step, in_a_row = step + 1, 0
            ema = result.loss if ema is None else 0.9 * ema + 0.1 * result.loss
            logged = {"loss": result.loss, "lr": result.lr}
            if result.grad_norm is not None:
                logged["grad_norm"] = result.grad_norm
            rows += [["train", step, k, v] for k, v in logged.items()]
            tracked.log(step, {f"train/{k}": v for k, v in logged.items()})
            if bar is not None:
                bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
                bar.update(1)
            if evaluates and cfg.eval_every and step % cfg.eval_every == 0 and step != p.total_steps:
                t = time.perf_counter()
                scores = evaluate_all(p)
                eval_s += time.perf_counter() - t
                evals.append([step, scores])
                rows += [["eval", step, k, v] for k, v in scores.items()]
                tracked.log(step, scores)
                if store is not None:  # flush so a long run's curve is visible (and kept) while it trains
                    store.add_curves(key, [tuple(r) for r in rows[flushed:]])
                    flushed = len(rows)
            if checkpoints is not None and (interrupted() or  # the last step too: a rerun then only evaluates
                                            step != p.total_steps and checkpoints.every and step % checkpoints.every == 0):
                save()
            if interrupted():
                raise KeyboardInterrupt
    train_s = train_s0 + time.perf_counter() - t_train - (eval_s - eval_s0)
    if accel is not None:  # each process counted its own shard; throughput is the whole run's
        for name in ("tokens", "padded_tokens", "examples"):
            setattr(timer, name, int(accel.reduce(torch.tensor(getattr(timer, name), device=device), "sum")))
    if bar is not None:
        bar.close()
    t, rng = time.perf_counter(), checkpoint.rng_state()
    try:
        with checkpoint.deferred_interrupts(checkpoints is not None, defer=False):  # SIGTERM is Ctrl-C here
            final = evaluate_all(p) if evaluates else {}
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while evaluating: stored cancelled, and a rerun only evaluates
        if checkpoints is not None:
            save(rng)
        raise
    except Exception as e:  # the trained state is kept: a rerun evaluates it without training again
        eval_s += time.perf_counter() - t
        kept = save(rng) if checkpoints is not None else None  # the RNG as the evaluation found it
        raise EvaluationFailed(p.total_steps, kept, rows[flushed:], e) from e
    eval_s += time.perf_counter() - t
    if accel is not None:
        accel.wait_for_everyone()
    evals.append([p.total_steps, final])
    rows += [["eval", p.total_steps, k, v] for k, v in final.items()]
    tracked.log(p.total_steps, final)
    return {"scores": final, "evals": [tuple(e) for e in evals], "curve": [tuple(r) for r in rows[flushed:]],
            "timer": timer, "train_s": train_s, "eval_s": eval_s, "skipped_steps": skipped,
            "resumed_from_step": p.resume.step if p.resume is not None else None}


class EvaluationFailed(RuntimeError):
    """Training ended, the final evaluation raised. ``checkpoint``: the trained state, saved (None: checkpoints
    are off); ``curve``: the curve rows not yet in the store."""

    def __init__(self, steps: int, checkpoint: Path | None, curve: list, cause: BaseException) -> None:
        kept = (f"the trained state is kept in {checkpoint}: run it again to evaluate it without training"
                if checkpoint is not None else "this run keeps no checkpoint (checkpoint_every 0, or data-parallel), "
                "so the trained state is lost")
        super().__init__(f"training finished ({steps} steps) and the final evaluation failed "
                         f"({type(cause).__name__}: {cause}); {kept}.")
        self.checkpoint, self.curve = checkpoint, curve


def _progress(p: Prepared, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=p.total_steps, initial=initial, desc=f"{p.task.name} {p.cfg.method} {p.cfg.targets}", unit="step",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=False)


def best_dev(task: Task, evals: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The "best dev score" convention (the best evaluation point: max, or min for a metric the task kind says is
    better lower), labelled ``best_dev/...`` in the store."""
    main = f"dev/{task.main_metric}"
    points = [(s, sc) for s, sc in evals if main in sc and sc[main] is not None and math.isfinite(sc[main])]
    if not points:
        return {}
    sign = 1.0 if task.kind.higher_is_better(task.main_metric) else -1.0
    step, scores = max(points, key=lambda x: sign * x[1][main])
    out = {k.replace("dev/", "best_dev/", 1): v for k, v in scores.items() if k.startswith("dev/")}
    out["best_dev/step"] = step
    return out


def _predicted_memory(p: Prepared, tokens: int, rss_start: int) -> dict[str, Any]:
    """The memory model's peak for this run (``predicted_peak_mb``), or None and why where it cannot describe it."""
    cfg, runtime = p.cfg, p.runtime
    frozen = next((q for q in p.model.parameters() if not q.requires_grad and q.dim() == 2), None)
    weights = ("nf4" if runtime.quantize == "4bit" else None if frozen is None else
               {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(frozen.dtype))
    act = (runtime.precision if runtime.autocast_dtype is not None else
           (cfg.quant_compute_dtype or "fp32") if weights == "nf4" else (weights or "fp32"))
    pred, why = memory_model.predict_run(
        getattr(p.model, "config", None), method=cfg.method, targets=cfg.targets,
        rank=p.method.args_dict().get("rank"),
        classifier=p.task.kind.peft_task_type == "SEQ_CLS", weights=weights, act_dtype=act,
        checkpointing=cfg.gradient_checkpointing, tokens=tokens, num_labels=p.task.num_labels,
        runtime_bytes=0.0 if runtime.device.type == "cuda" else float(rss_start), sharded=runtime.sharded,
        feature_cache=p.features is not None)
    if pred is None:
        return {"predicted_peak_mb": None, "predicted_peak_note": why}
    return {"predicted_peak_mb": pred.total / 2**20, "predicted_peak_note": None}


# Runs started in this process so far. A process's peak memory (peak RSS on a CPU) never goes down, so a run that is
# not the first in its process may report an earlier run's peak: each run records whether it was first
# (``details.fresh_process``), and the report flags a configuration whose runs mix the two.
_runs_in_process = 0


def _first_in_process() -> bool:
    global _runs_in_process
    _runs_in_process += 1
    return _runs_in_process == 1


def run(cfg: RunConfig, store: Store | None = None, progress: bool | None = None,
        tags: dict | None = None, force: bool = False) -> dict[str, Any]:
    """One run end to end: set up (all validation first), train, evaluate, store. Returns the stored record.

    Bad input raises :class:`ConfigError` before anything is stored. A non-finite loss stores the run as
    ``diverged``; any other exception as ``failed`` (and is re-raised); Ctrl-C as ``cancelled``.

    With a store, the run checkpoints into the store's ``<store>.checkpoints/<key>/`` beside it
    (``checkpoint_every``); when a checkpoint of this key is there (an earlier attempt was killed, cancelled or
    failed; not a done run redone by ``--force``) and was trained on the same model and data (by content), the run
    continues from it and ``details.resumed_from_step`` says from where. The checkpoints are removed when the run is
    done, unless ``keep_checkpoints``.

    A key that is ``done`` in the store is trained again only with ``force`` (the store's claim decides, so a run
    that a sweep finished while this one was set up is returned as stored, not trained again).
    """
    fresh_process = _first_in_process()
    cfg = resolve(cfg)
    progress = cfg.progress if progress is None else progress
    key = run_key(cfg)
    runtime = build_runtime(cfg)  # once: loading, training, the step and evaluation all use this one
    device = runtime.device
    if not runtime.is_main:
        store = None  # one process of a data-parallel run writes the record
    memory = PeakMemory(device)
    memory.reset()
    t0 = time.perf_counter()
    folder = None  # data-parallel runs are not checkpointed
    if store is not None and runtime.accelerator is None:
        folder = checkpoint.folder_for(store.path, key)
    resume = None
    if folder is not None and store.status(key) != "done":
        checkpoint.adopt_legacy(store.path, key)
        resume = checkpoint.Checkpoints(folder, 0).latest()
    p = prepare(cfg, runtime, resume)
    resume = p.resume  # None when the checkpoint was saved from other inputs (prepare said so)
    checkpoints = None
    if folder is not None and cfg.checkpoint_every != 0:  # 0: off, not even on SIGTERM
        every = cfg.checkpoint_every if cfg.checkpoint_every is not None else checkpoint.default_every(p.total_steps)
        checkpoints = checkpoint.Checkpoints(folder, every)
    prov = {
        "code": provenance.code_version(), "packages": provenance.package_versions(),
        "hardware": provenance.hardware(device), "command": provenance.command_line(), "seed": cfg.seed,
        "data_seed": cfg.data_seed, "data_files": {f: provenance.file_sha256(f) for f in p.info["data_files"]},
        "model": {"name": cfg.model, "path": p.info["model_path"], "sha256": fingerprint(p.info["model_path"])},
        "comparable": p.task.comparable,
    }
    main_metric = f"dev/{p.task.main_metric}"
    if store is not None:
        try:
            store.start(key, cfg.to_dict(), prov, tags, main_metric, redo_done=force)
        except AlreadyDone as e:
            print(f"note: {e}", file=sys.stderr)
            return store.get(key) or {}
    try:  # after the claim: a run that is not trained opens no tracker run
        trackers = Trackers(cfg.tracker if runtime.is_main else [], key, cfg.to_dict(),
                            store.path.parent if store is not None else Path("."), resume.step if resume else 0,
                            resume.trackers if resume else None)
    except BaseException:
        if store is not None:  # a tracker that cannot start leaves the store as it was
            store.unclaim(key)
        raise
    if resume is None and folder is not None:  # a fresh start (--force): checkpoints left by an earlier attempt go
        checkpoint.remove(folder)
    cost: dict[str, Any] = {
        "trainable_params": p.method.trainable_parameters(p.model), "base_params": p.base_params,
        "total_params": sum(q.numel() for q in {id(q): q for q in p.model.parameters()}.values()),
        "setup_s": p.info["setup_s"], "total_steps": p.total_steps, "epochs": p.info["epochs"],
        "processes": runtime.num_processes,
    }
    cost["trainable_fraction"] = cost["trainable_params"] / max(1, p.base_params)
    details = {"groups": describe_groups(p.groups), "info": p.info, "method_args": p.method.args_dict(),
               "fresh_process": fresh_process}
    status, error, scores = "done", None, {}
    if resume is not None:
        details["resumed_from_step"] = resume.step
        print(f"run {key}: resuming from step {resume.step} of {p.total_steps} ({resume.path})"
              + ("; training had finished: evaluating it" if resume.step >= p.total_steps else ""), file=sys.stderr)
    try:
        with MemorySampler(device) as sampler:  # memory over training: mean and p99 beside the peak
            out = train(p, store, key, progress, checkpoints, trackers)
        cost.update(sampler.summary())
        scores = {**out["scores"], **best_dev(p.task, out["evals"])}
        timer = out["timer"]
        cost.update(timer.summary())
        cost.update(speed_cost(p.flop_shape, p.method.capabilities, timer.tokens, timer.token_pairs,
                               sum(timer.times), device, runtime.precision))
        cost.update(_predicted_memory(p, timer.longest_batch, memory.start))
        cost.update(train_s=out["train_s"], eval_s=out["eval_s"], **p.eval_cost)
        details["skipped_steps"] = out["skipped_steps"]
        if p.features is not None:
            cost["feature_cache_mb"] = p.features.nbytes / 2**20
        state = p.method.optimizer_state(p.optimizer)
        cost.update(optimizer_state_numel=sum(t.numel() for t in state),
                    optimizer_state_bytes=sum(t.numel() * t.element_size() for t in state))
        if store is not None:
            store.add_curves(key, out["curve"])
            if p.predictions:  # every prediction of the final evaluation, for reports and audits
                store.add_predictions(key, p.predictions)
        if cfg.export_dir and runtime.is_main:
            exported = p.method.export(p.model, Path(cfg.export_dir), cfg.overwrite, p.tokenizer)
            details["export"] = {"dir": cfg.export_dir, **exported}
    except Diverged as e:
        status, error = "diverged", str(e)
        details["diverged_at_step"] = e.step
        details["skipped_steps"] = e.skipped
        if store is not None:
            store.add_curves(key, e.curve)
    except KeyboardInterrupt:
        status, error = "cancelled", "interrupted (Ctrl-C or SIGTERM)"
        raise
    except EvaluationFailed as e:  # trained: the record says so, the curves and the checkpoint stay
        status, error = "failed", f"{e}\n{traceback.format_exc(limit=8)}"
        details["failed_in"] = "final evaluation"
        details["trained_checkpoint"] = str(e.checkpoint) if e.checkpoint is not None else None
        if store is not None:
            store.add_curves(key, e.curve)
        raise
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised (SystemExit too: never stored as done)
        status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        raise
    finally:
        cost.update(memory.read())
        if "predicted_peak_mb" in cost:
            cost.update(memory_model.compare(cost["predicted_peak_mb"], cost.get("peak_memory_mb")))
        cost["wall_s"] = time.perf_counter() - t0
        main = scores.get(main_metric)
        try:
            if store is not None:
                store.finish(key, status, scores, cost, details, error, main)
            if status == "done" and folder is not None and not cfg.keep_checkpoints:
                checkpoint.remove(folder)
        finally:
            trackers.log(p.total_steps, {f"cost/{k}": v for k, v in cost.items()})
            trackers.finish(status)
    record = store.get(key) if store is not None else None
    if record is None:
        record = {"run_key": key, "status": status, "config": cfg.to_dict(), "scores": scores, "cost": cost,
                  "provenance": prov, "details": details, "error": error, "main_metric": main_metric,
                  "main_score": scores.get(main_metric)}
    return record
