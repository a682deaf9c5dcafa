"""The one training loop, for every method: set-up → train → evaluate → record.

Read top to bottom: :func:`run` resolves everything that can fail on bad input *before* the first step (task,
method, data, model, targets), then trains with AdamW (or the method's optimizer), a warm-up + decay schedule,
gradient accumulation, clipping and autocast, evaluating every ``eval_every`` steps and at the end. Methods act
only through the hooks of :class:`~efficientft.methods.base.Method`.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import provenance
from .config import DEFAULT_EPOCHS, RunConfig
from .data import Encoded, TrainBatches, encode, eval_batches
from .errors import ConfigError
from .features import FeatureCache
from .meters import MemorySampler, PeakMemory, StepTimer
from .methods import get_method
from .methods.base import Context, Method, check_export_dir
from .models import ALL, describe, fingerprint, head_modules, load_model, resolve_model, resolve_targets
from .models.large import check_quantized_method, enable_gradient_checkpointing
from .step import MAX_SKIPPED_IN_A_ROW, Diverged, autocast, forward, optimizer_step
from .store import Store
from .strategy import Strategy, describe_groups
from .tasks import DataOptions, Examples, Task, get_task
from .tasks.metrics import compute


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return torch.device(name)


_ACCELERATOR: Any = None


def data_parallel(device: torch.device) -> Any:
    """The ``accelerate.Accelerator`` of a data-parallel launch (``WORLD_SIZE`` > 1), else None.

    Launch one run on N processes with ``torchrun --nproc_per_node N -m efficientft.cli run ...`` (CPU, gloo) or
    ``accelerate launch --multi_gpu --num_processes N -m efficientft.cli run ...`` (GPUs). Every process builds
    the same model from the same seed and trains on its 1/N slice of every global batch; DDP averages the
    gradients, so each optimizer step is the step on the whole batch (``batch_size`` is the global batch).
    Only the main process evaluates and writes the store. The run's key is the single-process key.
    """
    global _ACCELERATOR
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        accel = Accelerator(cpu=device.type == "cpu")
        # Sharding launches are refused: they shard parameters the optimizer already holds. Read from the launch's
        # request too, since accelerate on CPU silently falls back to plain data parallel.
        asked = [k for k in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{k}", "").lower() == "true"]
        sharded = asked[0] if asked else accel.distributed_type.name
        if sharded in ("FSDP", "DEEPSPEED"):
            raise ConfigError(f"{sharded} launches are not supported: this loop builds the "
                              "optimizer before wrapping the model, so sharded parameters would not train. Use a "
                              "data-parallel launch (--multi_gpu) or --quantize 4bit with --gradient-checkpointing.")
        _ACCELERATOR = accel
    return _ACCELERATOR


def run_device(cfg: RunConfig) -> torch.device:
    """The device of this process: the configured one, or this rank's device in a data-parallel launch."""
    device = pick_device(cfg.device)
    accel = data_parallel(device)
    return accel.device if accel is not None else device


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
    device: torch.device
    train: Encoded
    evals: dict[str, Encoded]
    total_steps: int
    groups: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    base_params: int
    info: dict[str, Any] = field(default_factory=dict)
    features: FeatureCache | None = None

    def batches(self) -> TrainBatches:
        return TrainBatches(self.train, self.cfg.batch_size, self.info["pad_id"], self.cfg.seed, self.cfg.bucket)


def load_data(task: Task, cfg: RunConfig) -> tuple[Examples, dict[str, Examples]]:
    """The training split (seeded subsample, minus a carved selection split) and the evaluation splits."""
    opts = DataOptions(cfg.data_dir, cfg.data_source)
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
        data = (cfg.task, repr(cfg.custom), cfg.data_dir, cfg.data_source, cfg.selection_size, cfg.max_train,
                cfg.max_eval, cfg.data_seed)
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


def _accepts(model: nn.Module, arg: str) -> bool:
    return arg in inspect.signature(model.forward).parameters


def prepare(cfg: RunConfig) -> Prepared:
    """Validate and set up a run; every bad-input error is raised here, before any training."""
    t0 = time.perf_counter()
    if cfg.export_dir:  # a used folder fails now, not after training
        check_export_dir(cfg.export_dir, cfg.overwrite)
    device = run_device(cfg)
    accel = data_parallel(device)
    if accel is not None and cfg.batch_size % accel.num_processes:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {accel.num_processes} data-parallel "
                          f"processes (it is the global batch, split evenly between them).")
    task = get_task(cfg.task, cfg.custom)
    method_cls = get_method(cfg.method)
    method: Method = method_cls.from_config(cfg.method_args)
    if cfg.targets == ALL and not method.accepts_all:
        raise ConfigError(f"targets 'all' (every weight) is for full fine-tuning only, not {cfg.method!r}.")
    check_quantized_method(method, cfg.quantize)
    train_ex, eval_ex = load_data(task, cfg)

    seed_everything(cfg.seed)  # the head's random init depends on the seed only
    loaded = load_model(cfg.model, task.num_labels, cfg.trust_remote_code, cfg.quantize, cfg.quant_compute_dtype,
                        device)
    model = loaded.model
    if cfg.gradient_checkpointing:  # before the method wraps the model: every layer is checkpointed whole
        enable_gradient_checkpointing(model)
    base_params = sum(p.numel() for p in model.parameters())
    targets = [] if cfg.targets == ALL else resolve_targets(model, cfg.targets)
    with_types = _accepts(model, "token_type_ids") and "token_type_ids" in loaded.tokenizer.model_input_names
    train = encode(train_ex, loaded.tokenizer, cfg.max_length, with_types)
    evals = {k: encode(v, loaded.tokenizer, cfg.max_length, with_types) for k, v in eval_ex.items()}

    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.steps or max(1, math.ceil((cfg.epochs or DEFAULT_EPOCHS) * per_epoch / cfg.grad_accum))
    ctx = Context(heads=head_modules(model), total_steps=total, num_labels=task.num_labels, seed=cfg.seed,
                  base_model=loaded.path)
    torch.manual_seed(cfg.seed)  # adapter initialisation depends on the seed only
    model = method.prepare(model, targets, ctx).to(device)
    pad_id = loaded.tokenizer.pad_token_id
    batches = TrainBatches(train, cfg.batch_size, pad_id, cfg.seed, cfg.bucket)
    method.init_from_data(model, ({k: v.to(device) for k, v in b.items()} for b in batches.forever()))
    groups = method.param_groups(model, Strategy(cfg.role_ratios), cfg.lr, cfg.weight_decay)
    if not groups:
        raise ConfigError(f"method {cfg.method!r} with targets {cfg.targets!r} left no parameter to train.")
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
        "model": describe(model),
    }
    features = None
    if cfg.feature_cache:
        features = FeatureCache(model, lambda: autocast(device, cfg.precision))
        for name, enc in [("train", train), *evals.items()]:
            features.add_split(name, enc, pad_id)
        features.check("train")  # a model or method the cache cannot serve fails here, before training
        info["feature_cache"] = {"layers": features.list_name, "first_trained_layer": features.k}
    info["setup_s"] = time.perf_counter() - t0
    return Prepared(cfg, task, method, model, loaded.tokenizer, device, train, evals, total, groups, optimizer,
                    scheduler, base_params, info, features)


def device_batches(p: Prepared):
    """(example indices, batch on the device), epoch after epoch."""
    for idx, b in p.batches().indexed():
        yield idx, {k: v.to(p.device) for k, v in b.items()}


@torch.no_grad()
def evaluate(p: Prepared, split: str) -> dict[str, float]:
    """Scores of the current model on one evaluation split."""
    model, enc = p.model, p.evals[split]
    was_training = model.training
    model.eval()
    preds = np.zeros(len(enc), dtype=np.float64)
    for idx, batch in eval_batches(enc, p.cfg.eval_batch_size, p.info["pad_id"]):
        batch = {k: v.to(p.device) for k, v in batch.items() if k != "labels"}
        logits = forward(p, split, idx, batch).logits.float()
        out = logits[:, 0] if p.task.is_regression else logits.argmax(-1)
        preds[idx] = out.cpu().numpy()
    model.train(was_training)
    gold = enc.labels
    pred = preds if p.task.is_regression else preds.astype(np.int64)
    return compute(p.task.metrics, pred, gold)


def evaluate_all(p: Prepared) -> dict[str, float]:
    return {f"{split}/{m}": v for split in p.evals for m, v in evaluate(p, split).items()}


def train(p: Prepared, store: Store | None = None, key: str = "", progress: bool = True) -> dict[str, Any]:
    """The loop. Returns scores, curves and timings; raises :class:`Diverged` on a non-finite loss.

    ``total_steps`` counts applied optimizer steps. Under fp16 a step the GradScaler skips (overflowing gradients)
    is tried again on the next batches, so the run still takes its whole schedule; the skipped attempts are timed
    (their work was done), returned as ``skipped_steps`` (the step each was an attempt at) and not in the curves.
    A non-finite *loss* is a divergence under every precision: loss scaling guards the backward pass, not the
    forward. Curves: ``loss`` is the step's mean over its examples, ``lr`` the rate the step used, ``grad_norm``
    the norm before clipping.
    """
    cfg, model, device = p.cfg, p.model, p.device
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    timer = StepTimer(device)
    batches = device_batches(p)
    curve: list[tuple[str, int, str, float]] = []
    evals: list[tuple[int, dict[str, float]]] = []
    skipped: list[int] = []
    eval_s = 0.0
    accel = data_parallel(device)
    main = accel is None or accel.is_main_process
    runner = accel.prepare_model(model) if accel is not None else model  # DDP: gradients averaged in backward
    bar = _progress(p, progress and main)
    ema = None
    model.train()
    t_train = time.perf_counter()
    step, in_a_row = 0, 0
    while step < p.total_steps:
        timer.start()
        micro = [_shard_indexed(*next(batches), accel) for _ in range(cfg.grad_accum)]
        for _, batch in micro:
            timer.tokens += int(batch["attention_mask"].sum())
            timer.padded_tokens += batch["attention_mask"].numel()
            timer.examples += len(batch["labels"])
        try:
            result = optimizer_step(p, micro, step + 1, scaler, runner, accel)
        except Diverged as e:
            e.curve, e.skipped = curve, skipped  # the curve so far is kept for diagnosis
            raise
        timer.stop()
        if result.skipped:
            skipped.append(step + 1)
            in_a_row += 1
            if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                e = Diverged(step + 1, result.loss, curve,
                             f"gradients were inf or NaN in {in_a_row} fp16 steps in a row at step {step + 1} "
                             "(the GradScaler skipped them all)")
                e.skipped = skipped
                raise e
            continue
        step, in_a_row = step + 1, 0
        ema = result.loss if ema is None else 0.9 * ema + 0.1 * result.loss
        curve.append(("train", step, "loss", result.loss))
        curve.append(("train", step, "lr", result.lr))
        if result.grad_norm is not None:
            curve.append(("train", step, "grad_norm", result.grad_norm))
        if bar is not None:
            bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
            bar.update(1)
        if main and cfg.eval_every and step % cfg.eval_every == 0 and step != p.total_steps:
            t = time.perf_counter()
            scores = evaluate_all(p)
            eval_s += time.perf_counter() - t
            evals.append((step, scores))
            curve += [("eval", step, k, v) for k, v in scores.items()]
            if store is not None:  # flush so a long run's curve is visible (and kept) while it trains
                store.add_curves(key, curve)
                curve = []
    train_s = time.perf_counter() - t_train - eval_s
    if accel is not None:  # each process counted its own shard; throughput is the whole run's
        for name in ("tokens", "padded_tokens", "examples"):
            setattr(timer, name, int(accel.reduce(torch.tensor(getattr(timer, name), device=device), "sum")))
    if bar is not None:
        bar.close()
    t = time.perf_counter()
    final = evaluate_all(p) if main else {}
    eval_s += time.perf_counter() - t
    if accel is not None:
        accel.wait_for_everyone()
    evals.append((p.total_steps, final))
    curve += [("eval", p.total_steps, k, v) for k, v in final.items()]
    return {"scores": final, "evals": evals, "curve": curve, "timer": timer, "train_s": train_s, "eval_s": eval_s,
            "skipped_steps": skipped}


def _progress(p: Prepared, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=p.total_steps, desc=f"{p.task.name} {p.cfg.method} {p.cfg.targets}", unit="step",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=False)


def best_dev(task: Task, evals: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The "best dev score" convention (max over evaluation points), labelled ``best_dev/...`` in the store."""
    main = f"dev/{task.main_metric}"
    points = [(s, sc) for s, sc in evals if main in sc and sc[main] is not None and math.isfinite(sc[main])]
    if not points:
        return {}
    step, scores = max(points, key=lambda x: x[1][main])
    out = {k.replace("dev/", "best_dev/", 1): v for k, v in scores.items() if k.startswith("dev/")}
    out["best_dev/step"] = step
    return out


def run(cfg: RunConfig, store: Store | None = None, progress: bool | None = None,
        tags: dict | None = None) -> dict[str, Any]:
    """One run end to end: set up (all validation first), train, evaluate, store. Returns the stored record.

    Bad input raises :class:`ConfigError` before anything is stored. A non-finite loss stores the run as
    ``diverged``; any other exception as ``failed`` (and is re-raised); Ctrl-C as ``cancelled``.
    """
    cfg = cfg.resolved()
    progress = cfg.progress if progress is None else progress
    key = cfg.key()
    device = run_device(cfg)
    accel = data_parallel(device)
    if accel is not None and not accel.is_main_process:
        store = None  # one process of a data-parallel run writes the record
    memory = PeakMemory(device)
    memory.reset()
    t0 = time.perf_counter()
    p = prepare(cfg)
    prov = {
        "code": provenance.code_version(), "packages": provenance.package_versions(),
        "hardware": provenance.hardware(device), "command": provenance.command_line(), "seed": cfg.seed,
        "data_seed": cfg.data_seed, "data_files": {f: provenance.file_sha256(f) for f in p.info["data_files"]},
        "model": {"name": cfg.model, "path": p.info["model_path"], "sha256": fingerprint(p.info["model_path"])},
        "comparable": p.task.comparable,
    }
    main_metric = f"dev/{p.task.main_metric}"
    if store is not None:
        store.start(key, cfg.to_dict(), prov, tags, main_metric)
    cost: dict[str, Any] = {
        "trainable_params": p.method.trainable_parameters(p.model), "base_params": p.base_params,
        "total_params": sum(q.numel() for q in {id(q): q for q in p.model.parameters()}.values()),
        "setup_s": p.info["setup_s"], "total_steps": p.total_steps, "epochs": p.info["epochs"],
        "processes": accel.num_processes if accel is not None else 1,
    }
    cost["trainable_fraction"] = cost["trainable_params"] / max(1, p.base_params)
    details = {"groups": describe_groups(p.groups), "info": p.info, "method_args": p.method.args_dict()}
    status, error, scores = "done", None, {}
    try:
        with MemorySampler(device) as sampler:  # memory over training: mean and p99 beside the peak
            out = train(p, store, key, progress)
        cost.update(sampler.summary())
        scores = {**out["scores"], **best_dev(p.task, out["evals"])}
        cost.update(out["timer"].summary())
        cost.update(train_s=out["train_s"], eval_s=out["eval_s"])
        details["skipped_steps"] = out["skipped_steps"]
        if p.features is not None:
            cost["feature_cache_mb"] = p.features.nbytes / 2**20
        state = p.method.optimizer_state(p.optimizer)
        cost.update(optimizer_state_numel=sum(t.numel() for t in state),
                    optimizer_state_bytes=sum(t.numel() * t.element_size() for t in state))
        if store is not None:
            store.add_curves(key, out["curve"])
        if cfg.export_dir and (accel is None or accel.is_main_process):
            details["export"] = {"dir": cfg.export_dir, **p.method.export(p.model, Path(cfg.export_dir), cfg.overwrite)}
    except Diverged as e:
        status, error = "diverged", str(e)
        details["diverged_at_step"] = e.step
        details["skipped_steps"] = e.skipped
        if store is not None:
            store.add_curves(key, e.curve)
    except KeyboardInterrupt:
        status, error = "cancelled", "interrupted (Ctrl-C or SIGTERM)"
        raise
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised
        status, error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        raise
    finally:
        cost.update(memory.read())
        cost["wall_s"] = time.perf_counter() - t0
        main = scores.get(main_metric)
        if store is not None:
            store.finish(key, status, scores, cost, details, error, main)
    record = store.get(key) if store is not None else None
    if record is None:
        record = {"run_key": key, "status": status, "config": cfg.to_dict(), "scores": scores, "cost": cost,
                  "provenance": prov, "details": details, "error": error, "main_metric": main_metric,
                  "main_score": scores.get(main_metric)}
    return record
