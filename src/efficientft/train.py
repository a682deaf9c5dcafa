"""The one training loop, for every method: set-up → train → evaluate → record.

Read top to bottom: :func:`prepare` sets up a run in small steps and raises everything that can fail on bad input
*before* the first step (task, method, data, model, targets); :class:`Trainer` trains it with AdamW (or the
method's optimizer), a warm-up + decay schedule, gradient accumulation, clipping and autocast, evaluating every
``eval_every`` steps and at the end, its progress on ``self`` (the :class:`~efficientft.checkpoint.TrainState` a
checkpoint saves) and its curves, trackers and progress bar fed through one :class:`~efficientft.logger.Logger`;
:func:`run` joins them under a :class:`~efficientft.recorder.Recorder` (the store's record, the status of each
outcome). Methods act only through the hooks of :class:`~efficientft.methods.base.Method`; task kinds evaluate
through :class:`~efficientft.tasks.base.EvalContext`, which :class:`Prepared` satisfies.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import checkpoint, content, memory_model, sharding
from .checkpoint import TrainState
from .config import DEFAULT_EPOCHS, RunConfig
from .data import Encoded, TrainBatches, sample_indices
from .errors import ConfigError
from .features import FeatureCache
from .flops import FlopShape, flop_shape, speed_cost
from .logger import Logger
from .meters import MemorySampler, StepTimer
from .methods import get_method
from .methods.base import Context, Method, check_export_dir
from .methods.capabilities import check_model
from .models import ALL, describe, load_model, resolve_model, resolve_targets
from .models.heads import CONFIG_KEY as HEAD_KEY
from .models.large import enable_gradient_checkpointing
from .models.loading import LoadOptions
from .models.loading import check_max_length as check_positions
from .recorder import EvaluationFailed, Recorder, total_params
from .resolve import check_method, checked, resolve, run_key
from .runtime import Runtime, build_runtime, check_runtime, check_shards
from .step import MAX_SKIPPED_IN_A_ROW, Diverged, forward, optimizer_step  # noqa: F401 - forward: re-exported
from .store import Store
from .strategy import Strategy, check_ratios_applied, describe_groups
from .tasks import DataOptions, Examples, Task, get_task
from .trackers import Trackers, check_installed
from .vocab import HEADS_KEYED_AS_BEFORE


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


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The run's schedule (:func:`schedule_fn`) on every optimizer group, at its ``initial_lr``.

    A group that joins the optimizer during training (a method that grows: IncreLoRA) carries ``start``, the step
    after which it joined, and follows the schedule afresh from there over the steps left: warm-up again, then the
    decay to 0 at the run's end (IncreLoRA's restart warm-up, arXiv 2308.12043; its reference code gives each new
    group such a schedule). Groups without ``start`` get exactly what ``LambdaLR`` with :func:`schedule_fn` gives.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup, total
        super().__init__(optimizer, schedule_fn(kind, warmup, total))

    def get_lr(self) -> list[float]:
        out = []
        for g in self.optimizer.param_groups:
            start = int(g.get("start", 0))
            fn = schedule_fn(self.kind, self.warmup, self.total - start) if start else self.lr_lambdas[0]
            out.append(g["initial_lr"] * fn(self.last_epoch - start))
        return out


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
    # what the task kind's evaluations returned, kept by the loop (:func:`evaluate`): the last predictions per split
    # (generation: one row per example) and its cost figures (generation_s, generated_tokens), recorded apart from
    # training time
    predictions: dict[str, list[dict]] = field(default_factory=dict)
    eval_cost: dict[str, float] = field(default_factory=dict)
    # the trivial baselines of each split's metrics and whether its predictions collapsed (the last evaluation's)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    collapsed: dict[str, bool] = field(default_factory=dict)
    kind_state: Any = None  # the kind's own working state, from its ``before_training`` (not recorded)
    inputs: dict[str, Any] = field(default_factory=dict)  # the content of what it read (kept in its checkpoints)
    flop_shape: FlopShape | None = None  # what its model FLOPs are counted from (before sharding splits it)
    # ``compile``: ``torch.compile(model)``, what the training step calls. It shares ``model``'s parameters; the
    # checkpoints, the export, evaluation and the method's hooks keep using ``model`` itself, so every saved name is
    # the module's own (a compiled module's state dict would prefix each with ``_orig_mod.``)
    compiled: nn.Module | None = None
    # what the method trained on the run's data before its steps (``Method.estimate_cost``: Light-PEFT's estimation),
    # as cost figures recorded beside the run's own training: estimate_steps, _tokens, _s and _flops
    estimate_cost: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------- what a task kind evaluates through (tasks.base.EvalContext)
    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def pad_id(self) -> int:
        return self.info["pad_id"]

    def autocast(self):
        return self.runtime.autocast()

    def forward(self, split: str, idx, batch: dict[str, torch.Tensor]):
        return forward(self, split, idx, batch)

    def batches(self) -> TrainBatches:
        return TrainBatches(self.train, self.cfg.batch_size, self.info["pad_id"], self.cfg.seed, self.cfg.bucket)


def load_data(task: Task, cfg: RunConfig) -> tuple[Examples, dict[str, Examples]]:
    """The training split (seeded subsample, minus a carved selection split) and the evaluation splits."""
    opts = DataOptions(cfg.data_dir, cfg.data_source, cfg.train_data)
    train = task.load("train", opts)
    evals: dict[str, Examples] = {}
    if cfg.selection_size:
        train, selection = train.split_off(cfg.selection_size, cfg.data_seed, cfg.selection_max)
        evals["selection"] = selection.sample(cfg.max_eval, cfg.data_seed)
    train = train.sample(cfg.max_train, cfg.data_seed)
    for split in task.eval_splits if cfg.score_official else ():
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
                cfg.selection_max, cfg.max_train, cfg.max_eval, cfg.data_seed)
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
    runtime, task, method = _check_settings(cfg, runtime)
    kind, device = task.kind, runtime.device  # the loop asks the kind; it never tests which kind it is
    train_ex, eval_ex = load_data(task, cfg)

    seed_everything(cfg.seed)  # the head's random init depends on the seed only
    loaded = load_model(cfg.model, task.num_labels, LoadOptions.from_runtime(runtime, cfg.trust_remote_code), head=kind,
                        readout=kind.readout(cfg))
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
    model = _adapt(cfg, method, model, targets, ctx, device)
    adapted = flop_shape(model)  # what a method's training before the run's steps trains (Light-PEFT's estimation)
    pad_id = loaded.tokenizer.pad_token_id
    batches = TrainBatches(train, cfg.batch_size, pad_id, cfg.seed, cfg.bucket)
    if resume is not None:
        if not_resumed(resume, method_state_misfit(method, model, resume)):  # the method's state is half restored:
            return prepare(cfg, runtime)  # prepare again, from scratch
    else:
        method.init_from_data(model, ({k: v.to(device) for k, v in b.items()} for b in batches.forever()))
    shape = flop_shape(model)
    estimate = method.estimate_cost()  # restored with the method's state on a resumed run
    if runtime.sharded:  # before the optimizer exists: it must hold the sharded parameters
        model = sharding.shard(model, runtime)
    compiled = _compile(model) if cfg.compile else None  # the method's modules in place, no optimizer state yet
    groups, optimizer, scheduler, warmup = _optimizer(cfg, method, model, total)
    chosen = getattr(loaded.model.config, HEAD_KEY, None)  # None: no head was built (a generative run)
    if cfg.head == "auto" and chosen is not None and chosen not in HEADS_KEYED_AS_BEFORE:  # one key, one computation
        raise ConfigError(f"model {cfg.model!r}: head auto chose {chosen!r} when the model loaded, but the run was "
                          f"planned (and keyed) before its files were on this machine; give --head {chosen} (or "
                          f"another head) so that the run's key says what it computes.", field="head")
    info = {
        "model_path": loaded.path, "is_decoder": loaded.is_decoder,
        "pad_id": pad_id, "warmup_steps": warmup, "epochs": total * cfg.grad_accum / per_epoch,
        "targets": [{"module": t.name, "role": t.role, "rows": t.out_slice} for t in method.adapted_targets(targets)],
        "train_examples": len(train), "eval_examples": {k: len(v) for k, v in evals.items()},
        **({"eval_examples_during": {k: min(len(v), cfg.eval_every_max) for k, v in evals.items()}}
           if cfg.eval_every_max else {}),
        "data_files": sorted({f for ex in [train_ex, *eval_ex.values()] for f in ex.files}),
        "skipped_rows": sum(ex.skipped_rows for ex in [train_ex, *eval_ex.values()]),
        "model": describe(model), "task_kind": kind.name,
        # the head auto chose when loading (a hub model whose files were not on this machine when it resolved)
        **({"head": chosen} if chosen != cfg.head else {}),
    }
    encoding = {k: e.stats for k, e in [("train", train), *evals.items()] if e.stats}
    if encoding:  # e.g. how many examples the cutoff length truncated, per split
        info["encoding"] = encoding
    if runtime.sharded:
        info["sharding"] = sharding.describe(model, runtime)
    features = _feature_cache(cfg, model, runtime, [("train", train), *evals.items()], pad_id, info)
    prepared = Prepared(cfg, task, method, model, loaded.tokenizer, runtime, train, evals, total, groups, optimizer,
                        scheduler, base_params, info, features, resume, inputs=inputs, flop_shape=shape,
                        compiled=compiled)
    if estimate:  # training on the run's data before its steps (setup_s includes its time)
        prepared.estimate_cost = {"estimate_steps": estimate["steps"], "estimate_tokens": estimate["tokens"],
                                  "estimate_s": estimate["s"],
                                  "estimate_flops": adapted.flops(estimate["tokens"], estimate["token_pairs"])}
    baseline = kind.before_training(prepared)  # e.g. the LM loss on held-out text before any step (forgetting)
    if baseline is not None:
        info.update(baseline.info)
        prepared.kind_state = baseline.state
    info["setup_s"] = time.perf_counter() - t0
    return prepared


def _check_settings(cfg: RunConfig, runtime: Runtime | None) -> tuple[Runtime, Task, Method]:
    """What can be refused before reading any data: trackers, the export folder, the runtime, the task and the
    method (against each other's declared capabilities)."""
    check_installed(cfg.tracker)
    if cfg.export_dir:  # a used folder fails now, not after training
        check_export_dir(cfg.export_dir, cfg.overwrite)
    if runtime is None:
        runtime = build_runtime(cfg)
    else:
        check_runtime(runtime, cfg)
    task = get_task(cfg.task, cfg.custom)
    kind = task.kind
    if cfg.feature_cache and not kind.supports_feature_cache:
        raise ConfigError(f"feature_cache does not work with {kind.name} tasks such as {task.name!r}: "
                          f"{kind.no_feature_cache_reason}; drop --feature-cache.")
    method_cls = get_method(cfg.method)
    method: Method = method_cls.from_config(cfg.method_args)
    check_method(cfg, method)  # targets, quantized base and λ against the method's declared capabilities
    kind.check_method(method)  # e.g. a method that declares it cannot train a generation task
    if runtime.sharded:
        sharding.check_config(cfg, method, runtime.precision)
    if method.capabilities.grows and runtime.num_processes > 1:
        raise ConfigError(f"method {cfg.method!r} adds parameters during training, which a {runtime.num_processes}-"
                          "process run cannot follow (its data-parallel wrapper holds the parameters it started "
                          "with); run one process.")
    if method.capabilities.grows and cfg.compile:
        raise ConfigError(f"method {cfg.method!r} adds parameters during training, which compile cannot follow (each "
                          "growth changes the compiled graph's parameters: it recompiles or falls back to eager, so "
                          "its step times would mislead); drop --compile.")
    if cfg.compile:
        check_compile(cfg, runtime)
    return runtime, task, method


def check_compile(cfg: RunConfig, runtime: Runtime) -> None:
    """``compile`` where it is known to work: one process (not data-parallel or FSDP, whose wrappers the step
    calls), without the feature cache (its per-instance ``forward`` swaps change what the compiled graph traced),
    and on a CPU with a C++ compiler (inductor writes and builds C++ there)."""
    if runtime.num_processes > 1:
        raise ConfigError(f"compile does not work with a {runtime.num_processes}-process (data-parallel or FSDP) "
                          "run; drop --compile or run one process.")
    if cfg.feature_cache:
        raise ConfigError("compile does not work with feature_cache (the cache swaps layers' forward during the "
                          "step); drop --compile or --feature-cache.")
    if runtime.device.type == "cpu" and not _cpp_compiler():
        raise ConfigError("compile needs a C++ compiler on a CPU (torch.compile builds C++ kernels): none of $CXX, "
                          "g++, c++, clang++ was found; install one or drop --compile.")


def _cpp_compiler() -> str | None:
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def _compile(model: nn.Module) -> nn.Module:
    """The model compiled for the training step. Dynamic shapes from the start (every batch is padded to its own
    longest example, so lengths vary and a static graph would be compiled twice); dropout drawn from torch's own
    generator (``fallback_random``), so the masks, the losses and resume are those of the eager run."""
    return torch.compile(model, dynamic=True, options={"fallback_random": True})


def _adapt(cfg: RunConfig, method: Method, model: nn.Module, targets: list, ctx: Context,
           device: torch.device) -> nn.Module:
    """The method's adapters injected (or its trainable weights chosen), seeded by the run's seed only; sizes that
    do not fit (a rank of 10**8) are one line, not a traceback."""
    torch.manual_seed(cfg.seed)  # adapter initialisation depends on the seed only
    try:
        return method.prepare(model, targets, ctx).to(device)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        args = ", ".join(f"{k}={v}" for k, v in method.args_dict().items()) or "its defaults"
        size = re.search(r"[Tt]ried to allocate (\d+) bytes", str(e))
        what = f"one tensor of {int(size.group(1)) / 2**30:,.1f} GiB" if size else "its adapters"
        raise ConfigError(f"method {cfg.method!r} ({args}) ran out of memory allocating {what} on this model; "
                          "choose smaller sizes.") from None


def _optimizer(cfg: RunConfig, method: Method, model: nn.Module, total: int) -> tuple[list[dict], Any, Any, int]:
    """The parameter groups (learning rates by role), the optimizer, the warm-up + decay schedule, the warm-up."""
    groups = method.param_groups(model, Strategy(cfg.role_ratios), cfg.lr, cfg.weight_decay)
    if not groups:
        raise ConfigError(f"method {cfg.method!r} with targets {cfg.targets!r} left no parameter to train.")
    check_ratios_applied(groups, cfg.role_ratios, cfg.method, cfg.targets, from_lr_ratio=cfg.lr_ratio != 1.0)
    optimizer = method.optimizer(groups, cfg.lr, cfg.weight_decay)
    warmup = int(round(cfg.warmup_ratio * total))
    scheduler = Schedule(optimizer, cfg.schedule, warmup, total)
    return groups, optimizer, scheduler, warmup


def _feature_cache(cfg: RunConfig, model: nn.Module, runtime: Runtime, splits: list[tuple[str, Encoded]], pad_id: int,
                   info: dict[str, Any]) -> FeatureCache | None:
    """The frozen layers' features of every split, computed once (``feature_cache``), or None."""
    if not cfg.feature_cache:
        return None
    features = FeatureCache(model, runtime.autocast)
    for name, enc in splits:
        features.add_split(name, enc, pad_id)
    features.check("train")  # a model or method the cache cannot serve fails here, before training
    info["feature_cache"] = {"layers": features.list_name, "first_trained_layer": features.k}
    return features


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
    """Scores of the current model on one evaluation split (the task kind says how it evaluates); the loop keeps
    what the kind returns beside them (its predictions, its cost figures)."""
    out = p.task.kind.evaluate(p, split)
    if out.predictions is not None:
        p.predictions[split] = out.predictions
    for name, value in out.cost.items():
        p.eval_cost[name] = p.eval_cost.get(name, 0) + value
    if out.baselines:
        p.baselines[split] = out.baselines
    if out.collapsed is not None:
        p.collapsed[split] = out.collapsed
    return out.scores


class Subsampled:
    """The run as a task kind evaluates it between steps under ``eval_every_max``: each evaluation split cut to a
    seeded subsample of at most that many examples (the same ones at every evaluation, so a curve compares like
    with like); everything else is the run's (:class:`Prepared`). The final evaluation scores the whole splits."""

    def __init__(self, p: Prepared, n: int, seed: int) -> None:
        self.p = p
        self.index = {k: sample_indices(len(e), n, seed) for k, e in p.evals.items()}
        self.evals = {k: e if self.index[k] is None else e.subset(self.index[k]) for k, e in p.evals.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.p, name)

    def forward(self, split: str, idx, batch: dict[str, torch.Tensor]):
        """The run's forward on examples ``idx`` of the subsample: their indices in the whole split (cached
        features are stored by those)."""
        full = self.index[split]
        return self.p.forward(split, idx if full is None else [full[int(i)] for i in idx], batch)


def evaluate_all(p: Prepared) -> dict[str, float]:
    """Every split's scores as ``<split>/<metric>``, plus what the kind derives from them (a suite's average)."""
    scores = {f"{split}/{m}": v for split in p.evals for m, v in evaluate(p, split).items()}
    return {**scores, **p.task.kind.summarise(p, scores)}


def train(p: Prepared, store: Store | None = None, key: str = "", progress: bool = True,
          checkpoints: checkpoint.Checkpoints | None = None, trackers: Trackers | None = None) -> dict[str, Any]:
    """The loop (:class:`Trainer`). Returns scores, curves and timings; raises :class:`Diverged` on a non-finite loss.

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
    trainer = Trainer(p, store, key, progress, checkpoints, trackers)
    trainer.train()
    return trainer.outcome(trainer.evaluate())


class Trainer:
    """One prepared run's training, its progress on ``self``: :attr:`state` is exactly what a checkpoint saves (step,
    data cursor, curves, evaluations, skipped steps, timer totals, evaluation time), written back into the model,
    optimizer, scheduler, scaler and RNG (:meth:`save`, and :meth:`TrainState.restore` when ``p.resume``)."""

    def __init__(self, p: Prepared, store: Store | None = None, key: str = "", progress: bool = True,
                 checkpoints: checkpoint.Checkpoints | None = None, trackers: Trackers | None = None) -> None:
        self.p, self.checkpoints, runtime = p, checkpoints, p.runtime
        self.scaler = runtime.grad_scaler()
        self.timer = StepTimer(p.device)
        self.state = TrainState() if p.resume is None else replace(  # its own copy: p.resume stays as it was read
            p.resume, curve=list(p.resume.curve), evals=list(p.resume.evals), skipped=list(p.resume.skipped))
        self.state.inputs = p.inputs
        self.resumed_from = p.resume.step if p.resume is not None else None
        if p.resume is not None:
            self._restore()
        self.eval_s0 = self.state.eval_s  # this attempt's training time leaves out its evaluations
        self.train_s0 = self.state.counters.get("train_s", 0.0)
        self.batches = device_batches(p, self.state.drawn)
        self.accel = runtime.accelerator
        self.runner = p.model if p.compiled is None else p.compiled  # the training step calls it (compile)
        # DDP: gradients averaged in backward; FSDP: the model is sharded (and averages) already
        if self.accel is not None and not runtime.sharded:
            self.runner = self.accel.prepare_model(p.model)
        self.evaluates = runtime.is_main or runtime.sharded  # a sharded model's forward needs every process
        self.log = Logger(self.state.curve, store, key, trackers if trackers is not None else
                          Trackers([], key, {}, Path(".")), _progress(p, progress and runtime.is_main, self.state.step),
                          replay=p.resume is not None)
        self.in_a_row = 0  # fp16 steps the GradScaler skipped in a row
        self.during: Subsampled | None = None  # what evaluations between steps score (eval_every_max)
        self.train_s = 0.0
        p.model.train()
        self.t_train = time.perf_counter()

    def _restore(self) -> None:
        """Continue from ``p.resume``: the model, optimizer, scheduler, scaler, then the RNG (nothing below draws
        from it before the first step); the cost figures count the whole run, every attempt."""
        self.state.restore(self.p, self.scaler)
        for name, value in self.state.counters.items():
            if name != "train_s":
                setattr(self.timer, name, value)

    def train(self) -> None:
        """Optimizer steps up to ``total_steps``, evaluating every ``eval_every`` and checkpointing every
        ``checkpoints.every`` steps; Ctrl-C or SIGTERM saves at the end of the step under way, then stops."""
        p, cfg, s, checkpoints = self.p, self.p.cfg, self.state, self.checkpoints
        with checkpoint.deferred_interrupts(checkpoints is not None) as interrupted:
            while s.step < p.total_steps:
                result = self._attempt()
                if result.skipped:
                    self._skipped(result)
                    if interrupted():
                        self.save()
                        raise KeyboardInterrupt
                    continue
                s.step, self.in_a_row = s.step + 1, 0
                self.log.step(s.step, result.loss, result.lr, result.grad_norm)
                if self.evaluates and cfg.eval_every and s.step % cfg.eval_every == 0 and s.step != p.total_steps:
                    self._evaluate_during()
                if checkpoints is not None and (interrupted() or  # the last step too: a rerun then only evaluates
                                                s.step != p.total_steps and checkpoints.every
                                                and s.step % checkpoints.every == 0):
                    self.save()
                if interrupted():
                    raise KeyboardInterrupt
        self.train_s = self._train_s()
        if self.accel is not None:  # each process counted its own shard; throughput is the whole run's
            for name in ("tokens", "padded_tokens", "examples"):
                setattr(self.timer, name, int(self.accel.reduce(torch.tensor(getattr(self.timer, name),
                                                                              device=p.device), "sum")))
        self.log.close()

    def _attempt(self):
        """One optimizer step's attempt: its micro-batches drawn (the data cursor moves), counted, stepped, timed."""
        timer, cfg, s = self.timer, self.p.cfg, self.state
        timer.start()
        micro = [_shard_indexed(*next(self.batches), self.accel) for _ in range(cfg.grad_accum)]
        s.drawn += cfg.grad_accum
        if self.p.method.capabilities.grows:  # this step's parameters, for its FLOPs (growth acts in its hooks)
            shape, tokens = flop_shape(self.p.model), sum(int(b["attention_mask"].sum()) for _, b in micro)
            timer.frozen_param_tokens += tokens * shape.frozen
            timer.trainable_param_tokens += tokens * shape.trainable
        for _, batch in micro:
            timer.tokens += int(batch["attention_mask"].sum())
            timer.padded_tokens += batch["attention_mask"].numel()
            timer.token_pairs += int((batch["attention_mask"].sum(1) ** 2).sum())
            timer.longest_batch = max(timer.longest_batch, batch["attention_mask"].numel())
            timer.examples += len(batch["labels"])
        try:
            result = optimizer_step(self.p, micro, s.step + 1, self.scaler, self.runner, self.accel)
        except Diverged as e:
            e.curve, e.skipped = self.log.pending(), s.skipped  # the curve so far is kept for diagnosis
            raise
        timer.stop()
        return result

    def _skipped(self, result: Any) -> None:
        """An fp16 step the GradScaler skipped; too many in a row are a divergence."""
        s = self.state
        s.skipped.append(s.step + 1)
        self.in_a_row += 1
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            e = Diverged(s.step + 1, result.loss, self.log.pending(),
                         f"gradients were inf or NaN in {self.in_a_row} fp16 steps in a row at step {s.step + 1} "
                         "(the GradScaler skipped them all)")
            e.skipped = s.skipped
            raise e

    def _evaluate_during(self) -> None:
        """An evaluation between steps (``eval_every``); its curve rows are flushed to the store."""
        t, cfg = time.perf_counter(), self.p.cfg
        if cfg.eval_every_max and self.during is None:
            self.during = Subsampled(self.p, cfg.eval_every_max, cfg.data_seed)
        scores = evaluate_all(self.during if self.during is not None else self.p)
        self.state.eval_s += time.perf_counter() - t
        self.state.evals.append([self.state.step, scores])
        self.log.scores(self.state.step, scores)
        self.log.flush()

    def evaluate(self) -> dict[str, float]:
        """The final evaluation. Ctrl-C or SIGTERM during it: the trained state is saved (a rerun only evaluates)
        and the interrupt raised; any other failure: saved, raised as :class:`EvaluationFailed`."""
        p, s = self.p, self.state
        t, rng = time.perf_counter(), checkpoint.rng_state()
        try:
            with checkpoint.deferred_interrupts(self.checkpoints is not None, defer=False):  # SIGTERM is Ctrl-C here
                final = evaluate_all(p) if self.evaluates else {}
        except KeyboardInterrupt:
            if self.checkpoints is not None:
                self.save(rng)
            raise
        except Exception as e:  # the trained state is kept: a rerun evaluates it without training again
            s.eval_s += time.perf_counter() - t
            kept = self.save(rng) if self.checkpoints is not None else None  # the RNG as the evaluation found it
            raise EvaluationFailed(p.total_steps, kept, self.log.pending(), e) from e
        s.eval_s += time.perf_counter() - t
        if self.accel is not None:
            self.accel.wait_for_everyone()
        s.evals.append([p.total_steps, final])
        self.log.scores(p.total_steps, final)
        return final

    def outcome(self, final: dict[str, float]) -> dict[str, Any]:
        """Scores, evaluations, the curve rows not yet stored, the timer and timings of the run."""
        s = self.state
        return {"scores": final, "evals": [tuple(e) for e in s.evals], "curve": [tuple(r) for r in self.log.pending()],
                "timer": self.timer, "train_s": self.train_s, "eval_s": s.eval_s, "skipped_steps": s.skipped,
                "resumed_from_step": self.resumed_from}

    def _train_s(self) -> float:
        return self.train_s0 + time.perf_counter() - self.t_train - (self.state.eval_s - self.eval_s0)

    def save(self, rng: dict | None = None) -> Path:
        """Checkpoint the whole training state (``rng``: the RNG as given, not as it is now)."""
        s = self.state
        s.counters = {n: getattr(self.timer, n) for n in ("tokens", "padded_tokens", "examples", "times",
                                                          "token_pairs", "longest_batch", "frozen_param_tokens",
                                                          "trainable_param_tokens")}
        s.counters["train_s"] = self._train_s()
        s.capture(self.p, self.scaler)
        if rng is not None:
            s.blobs["rng"] = rng
        s.trackers = self.log.trackers.run_ids()
        return self.checkpoints.save(s)


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


def measured(p: Prepared, out: dict[str, Any], sampled: dict[str, Any], rss_start: int) -> tuple[dict, dict, dict]:
    """What a trained run records: its scores (with the best-dev convention's), its cost figures (memory over
    training ``sampled``, throughput, FLOPs, the memory model's prediction, timings, optimizer state) and details."""
    scores = {**out["scores"], **best_dev(p.task, out["evals"])}
    timer, runtime = out["timer"], p.runtime
    cost = {**sampled, **timer.summary()}
    # a method that grows (IncreLoRA, TriAdaptLoRA) trains more parameters as it goes: its FLOPs count each step's
    # own (the timer's sums over every attempt, resumed or not, over its tokens: the token-weighted mean shape);
    # a sharded model's whole shape is the one taken before sharding split it
    grows = p.method.capabilities.grows
    shape = p.flop_shape
    if grows and shape is not None and timer.tokens:
        shape = replace(shape, frozen=timer.frozen_param_tokens / timer.tokens,
                        trainable=timer.trainable_param_tokens / timer.tokens)
    cost.update(speed_cost(shape, p.method.capabilities, timer.tokens, timer.token_pairs, sum(timer.times),
                           runtime.device, runtime.precision))
    cost.update(_predicted_memory(p, timer.longest_batch, rss_start))
    cost.update(train_s=out["train_s"], eval_s=out["eval_s"], **p.eval_cost)
    if p.features is not None:
        cost["feature_cache_mb"] = p.features.nbytes / 2**20
    state = p.method.optimizer_state(p.optimizer)
    cost.update(optimizer_state_numel=sum(t.numel() for t in state),
                optimizer_state_bytes=sum(t.numel() * t.element_size() for t in state))
    details: dict[str, Any] = {"skipped_steps": out["skipped_steps"]}
    if grows:  # what the run ended with: IncreLoRA trains (and holds) more at the end than at the start
        cost.update(trainable_params=p.method.trainable_parameters(p.model), total_params=total_params(p.model))
        cost["trainable_fraction"] = cost["trainable_params"] / max(1, p.base_params)
        details["groups"] = describe_groups(p.groups)
    if p.baselines:  # what the run had to beat, and whether it answered one thing (the report's learned mark)
        baselines = {f"{split}/{m}": v for split, b in p.baselines.items() for m, v in b.items()}
        details["baselines"] = {**baselines, **p.task.kind.summarise_baselines(p, baselines)}
        details["collapsed"] = dict(p.collapsed)
    if p.compiled is not None:  # the first step's time includes compiling the graph
        details["compiled"] = {"backend": "inductor", "first_step_s": timer.times[0] if timer.times else None}
    return scores, cost, details


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
    ``diverged``; any other exception as ``failed`` (and is re-raised); Ctrl-C as ``cancelled`` (:class:`Recorder`).

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
    # one process of a data-parallel run writes the record
    recorder = Recorder(cfg, key, store if runtime.is_main else None, runtime, fresh_process)
    p = prepare(cfg, runtime, recorder.resume_point())
    if not recorder.claim(p, tags, force):
        return recorder.stored()
    with recorder:  # the outcome -> the run's status; the record is written whatever happens
        with MemorySampler(runtime.device) as sampler:  # memory over training: mean and p99 beside the peak
            out = train(p, recorder.store, key, progress, recorder.checkpoints, recorder.trackers)
        recorder.trained(*measured(p, out, sampler.summary(), recorder.memory.start), out["curve"], p.predictions)
        if cfg.export_dir and runtime.is_main:
            exported = p.method.export(p.model, Path(cfg.export_dir), cfg.overwrite, p.tokenizer)
            recorder.details["export"] = {"dir": cfg.export_dir, **exported}
    return recorder.record()
