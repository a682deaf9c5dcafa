"""One optimizer step, for every method: weighted accumulation, fp16 loss scaling, method hooks, clipping.

The training loop (:mod:`efficientft.train`) and the benchmarks both step through :func:`optimizer_step`, so what
a benchmark times is what a run trains.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn


class StepRun(Protocol):
    """What a step reads of a prepared run (:class:`efficientft.train.Prepared` is one)."""

    cfg: Any  # max_grad_norm
    task: Any  # its kind weighs micro-batches
    method: Any
    model: nn.Module
    runtime: Any  # autocast
    groups: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    features: Any  # a FeatureCache, or None

    @property
    def device(self) -> torch.device: ...


class Diverged(RuntimeError):
    """The loss became NaN or infinite (or, under fp16, every step's gradients did, ``reason`` says)."""

    def __init__(self, step: int, loss: float, curve: list | None = None, reason: str | None = None) -> None:
        super().__init__(reason or f"loss became {loss} at step {step}")
        self.step, self.loss, self.curve = step, loss, curve or []
        self.skipped: list[int] = []  # fp16 steps the GradScaler skipped before (the loop fills it in)


# fp16: this many skipped steps in a row (the loss scale halved each time: 65536 -> 2^-9) mean the gradients are
# not finite at any scale, so the run has diverged rather than overflowed.
MAX_SKIPPED_IN_A_ROW = 25


def forward(p: StepRun, split: str, idx, batch: dict[str, torch.Tensor], runner: nn.Module | None = None):
    """The model's forward on a batch of examples ``idx`` of ``split`` (from cached features where enabled).

    ``runner`` is what is called (the DDP-wrapped model in a data-parallel run); default ``p.model``.
    """
    ctx = p.features.serving(split, idx, batch) if p.features is not None else nullcontext()
    with ctx, p.runtime.autocast():
        return (p.model if runner is None else runner)(**batch)  # a compiled module has no truth value


def batch_weight(p: StepRun, batch: dict[str, torch.Tensor]) -> int:
    """How much a micro-batch counts in its optimizer step: the units its loss is a mean over, as the task kind
    says (examples for classification, target tokens for generation)."""
    return p.task.kind.batch_weight(batch)


def accumulate(p: StepRun, micro: list[tuple[Any, dict[str, torch.Tensor]]], step: int,
               scaler: torch.amp.GradScaler | None = None, runner: nn.Module | None = None,
               accel: Any = None) -> float:
    """Forward and backward over the micro-batches of one step; returns the step's mean loss.

    Each micro-batch's loss (a mean over its own examples, or target tokens) is weighted by its share n_i / N of
    the step's examples or tokens (:func:`batch_weight`, summed over all processes), so the accumulated gradient is the gradient of the mean loss
    over the whole step, however unevenly the examples fell into micro-batches (the last batch of an epoch is
    short). DDP averages gradients over processes, so each process's share is multiplied by their number.
    """
    weights = [batch_weight(p, b) for _, b in micro]
    total = float(sum(weights))
    world = 1
    if accel is not None:
        total = float(accel.reduce(torch.tensor(total, device=p.device), "sum"))
        world = accel.num_processes
    mean = 0.0
    for (idx, batch), n in zip(micro, weights, strict=True):
        loss = forward(p, "train", idx, batch, runner).loss
        share = n / total
        part = loss.detach() * share
        value = float(part if accel is None else accel.reduce(part, "sum"))
        if not math.isfinite(value):
            raise Diverged(step, value)
        mean += value
        loss = loss * (share * world)
        (scaler.scale(loss) if scaler else loss).backward()
    return mean


@dataclass
class StepResult:
    """What one optimizer step did."""

    loss: float  # the mean loss over the step's examples
    grad_norm: float | None  # total gradient norm *before* clipping (None without clipping)
    lr: float  # the base learning rate this step used (each group ran at its lr_scale times it; λ is one)
    skipped: bool = False  # fp16: the GradScaler found inf/NaN gradients and did not update the weights


def _grads_finite(params: list[torch.Tensor]) -> bool:
    """Whether every gradient is finite: the GradScaler's own test for skipping a step, read before it steps."""
    grads = [q.grad for q in params if q.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def optimizer_step(p: StepRun, micro: list[tuple[Any, dict[str, torch.Tensor]]], step: int,
                   scaler: torch.amp.GradScaler | None = None, runner: nn.Module | None = None,
                   accel: Any = None) -> StepResult:
    """One optimizer step over the micro-batches ``[(indices, batch), ...]``: forward, backward, method hooks,
    clipping, update. The training loop and the benchmarks both step through here.

    Under fp16 a step whose gradients overflow is skipped by the GradScaler, and then it is not a step: no method
    hook sees its inf gradients (AdaLoRA's importance scores would turn NaN and it would never prune again), and
    the schedule does not advance. The gradients are unscaled before the hooks, so hooks and clipping see their
    true size (a gradient a method keeps itself, through a tensor hook, is not a parameter's: the method divides it
    by ``method.loss_scale``); the scaler's verdict (its scale fell) decides what happened.
    """
    cfg, model, method = p.cfg, p.model, p.method
    if method.capabilities.owns_update:
        return owned_step(p, micro, step, runner, accel)
    loss = accumulate(p, micro, step, scaler, runner, accel)
    params = [q for g in p.groups for q in g["params"]]
    skipped, scale = False, 1.0
    if scaler:
        scaler.unscale_(p.optimizer)
        skipped = not _grads_finite(params)
        scale = scaler.get_scale()
    method.loss_scale = scale  # what a gradient the method kept itself (not a parameter's) is still multiplied by
    if not skipped:
        method.after_backward(model, step)
    grad_norm = None
    if cfg.max_grad_norm and not skipped:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    first = p.optimizer.param_groups[0]  # groups are sorted by rate factor: with λ < 1 the first is W_v's
    lr = float(first["lr"]) / float(first.get("lr_scale", 1.0))
    if scaler:
        scaler.step(p.optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale
    else:
        p.optimizer.step()
    if not skipped:
        p.scheduler.step()
        method.after_step(model, step)
    p.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, None if skipped else grad_norm, lr, skipped)


def owned_step(p: StepRun, micro: list[tuple[Any, dict[str, torch.Tensor]]], step: int,
               runner: nn.Module | None = None, accel: Any = None) -> StepResult:
    """A step of a method that updates the weights itself from forward passes (``capabilities.owns_update``).

    The method gets the step's loss as a function: the mean over the micro-batches weighted by
    :func:`batch_weight`, as :func:`accumulate` weights their gradients, so gradient accumulation means the same
    here. No GradScaler is involved (nothing is backpropagated, so an fp16 step is never skipped); clipping is
    the method's, on the gradient it estimates, and only where it declares ``capabilities.clipping``. The schedule and ``after_step`` then run as for every method.
    """
    weights = [batch_weight(p, b) for _, b in micro]
    total = float(sum(weights))
    if accel is not None:
        total = float(accel.reduce(torch.tensor(total, device=p.device), "sum"))

    def loss_fn() -> float:
        mean = 0.0
        with torch.no_grad():
            for (idx, batch), n in zip(micro, weights, strict=True):
                part = forward(p, "train", idx, batch, runner).loss.detach().float() * (n / total)
                mean += float(part if accel is None else accel.reduce(part, "sum"))
        if not math.isfinite(mean):
            raise Diverged(step, mean)
        return mean

    first = p.optimizer.param_groups[0]
    lr = float(first["lr"]) / float(first.get("lr_scale", 1.0))
    clip = p.cfg.max_grad_norm if p.method.capabilities.clipping else None  # its algorithm, whatever the default
    loss, grad_norm = p.method.update(p.model, p.optimizer, loss_fn, step, clip)
    p.scheduler.step()
    p.method.after_step(p.model, step)
    return StepResult(loss, grad_norm, lr)
