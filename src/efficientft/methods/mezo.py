"""MeZO and Sparse MeZO: zeroth-order fine-tuning from forward passes only (no backward, no optimizer state).

**MeZO** (Malladi et al., NeurIPS 2023, "Fine-Tuning Language Models with Just Forward Passes", arXiv 2305.17333,
Algorithm 1) estimates the gradient by SPSA (their Eq. 1): for a direction z ~ N(0, I_d),

    g = (L(θ + εz; B) − L(θ − εz; B)) / (2ε)        (the projected gradient, ≈ ∇L · z)
    θ ← θ − η · (g · z + wd · θ)

and never stores z: it is drawn from a per-step seed, the weights are perturbed in place (θ + εz, then θ − 2εz,
then + εz back), and z is drawn again from the same seed for the update. Memory is that of inference.
Both losses are taken with dropout off (the model in eval mode), so they are values of one function, as in the
authors' code. The step's seed is a function of the run's seed and the step number, so a resumed run draws the
same directions as an uninterrupted one with nothing to restore but the step.

**Sparse MeZO** (Liu et al. 2024, "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
Fine-Tuning", arXiv 2402.15751) perturbs and updates only a sparse subset: ẑ = m ⊙ z with m_i = 1 where
|θ_i| ≤ h, h a per-tensor threshold: the ``1 − sparsity`` quantile of the tensor's |θ| (the paper's finding is
that the estimation error hurts large weights most). Mask and threshold are computed from the current weights at
the start of each step, as the paper's memory-efficient implementation computes the mask on the fly, and are kept
for that step's two perturbations and its update: the same entries move in all three, and no other entry changes.
(A threshold frozen at the start would freeze a zero-initialised bias for good after its first step.)

What trains (is perturbed) is what full fine-tuning trains: the targeted modules' weights (and biases), the task
head, or every weight with targets ``all`` (the paper's setting). λ scales the step of W_v's parameters: the
update is per parameter, so it has a W_v role. These methods own their update (``capabilities.owns_update``): the
loop calls :meth:`ZerothOrder.update` with a forward-only loss instead of backward + clip + ``optimizer.step``.
Gradient accumulation is defined (the loss is the weighted mean over the step's micro-batches, as the gradient
would be). Algorithm 1 does not clip, so neither do these methods: they declare ``capabilities.clipping`` False, so
the run's default ``max_grad_norm`` (1.0) resolves to none, the loop hands :meth:`ZerothOrder.update` no norm, and
a norm the user gives is refused in one line (clipped at 1.0, ‖g·z‖ of 168–445 on MiniLM would become exactly 1
every step: a sign method, not MeZO). Under fp16 no GradScaler is used (nothing is backpropagated); gradient checkpointing is
refused (there is no backward pass whose activations it could save).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from . import register
from .args import FRACTION, POSITIVE, MethodArgs, arg
from .capabilities import Capabilities
from .full import FullFineTuning

_QUANTIZED = "it perturbs and updates the base weights themselves, which needs them in full precision"


@dataclass
class MezoArgs(MethodArgs):
    eps: float = arg(1e-3, POSITIVE)  # ε: the perturbation scale (the paper's default)


@dataclass
class SparseMezoArgs(MethodArgs):
    eps: float = arg(1e-3, POSITIVE)
    # the fraction of each tensor's entries (the largest |θ|) that is never perturbed
    sparsity: float = arg(0.75, FRACTION, note="the fraction of entries left out")


class ForwardOnly(torch.optim.Optimizer):
    """Holds the parameter groups (learning rate per group: λ and the schedule act on it) and no state at all;
    the update is the method's own (:meth:`ZerothOrder.update`)."""

    def __init__(self, groups: list[dict], lr: float, weight_decay: float) -> None:
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})

    def step(self, closure: Callable | None = None) -> None:  # noqa: ARG002 - the contract of Optimizer
        raise RuntimeError("a zeroth-order method updates through Method.update, not optimizer.step()")

    def stepped(self) -> None:
        """Record that the weights were updated this step (what torch's LR scheduler checks before it steps)."""
        self._opt_called = True


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s direction z: a function of the run's seed and the step only (exact resume)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(step)]).generate_state(1, np.uint64)[0] % 2**63)


def directions(params: list[torch.Tensor], seed: int) -> Iterator[torch.Tensor]:
    """z for each parameter in order, z ~ N(0, I), regenerated identically from ``seed`` (never stored)."""
    gens: dict[torch.device, torch.Generator] = {}
    for p in params:
        if p.device not in gens:
            gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
        yield torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=p.dtype)


@torch.no_grad()
def perturb(params: list[torch.Tensor], seed: int, scale: float,
            masks: list[torch.Tensor | None] | None = None) -> float:
    """θ ← θ + scale · (m ⊙ z) in place; returns ‖m ⊙ z‖²."""
    sq = 0.0
    for i, (p, z) in enumerate(zip(params, directions(params, seed), strict=True)):
        if masks is not None and masks[i] is not None:
            z = z * masks[i]
        p.add_(z, alpha=scale)
        sq += float(z.double().pow(2).sum())
    return sq


@torch.no_grad()
def projected_gradient(params: list[torch.Tensor], loss_fn: Callable[[], float], eps: float, seed: int,
                       masks: list[torch.Tensor | None] | None = None) -> tuple[float, float, float]:
    """SPSA: (g, the mean of the two losses, ‖m ⊙ z‖²) with g = (L(θ+εz) − L(θ−εz)) / 2ε; θ is restored."""
    sq = perturb(params, seed, eps, masks)
    at = eps  # where θ is now, in units of z: restored even when a loss raises (a divergence)
    try:
        plus = float(loss_fn())
        perturb(params, seed, -2 * eps, masks)
        at = -eps
        minus = float(loss_fn())
    finally:
        perturb(params, seed, -at, masks)
    return (plus - minus) / (2 * eps), (plus + minus) / 2, sq


# What both zeroth-order methods can do (each registered class names it in its own body, as registration requires)
_ZO_CAPABILITIES = Capabilities(all_targets=True, fused_slices=True, v_role=True, quantized_base=False,
                                gradient_checkpointing=False, quantized_base_reason=_QUANTIZED, merge=True,
                                export="model", owns_update=True, clipping=False,
                                forward_passes=2, backward=False)


class ZerothOrder(FullFineTuning):
    """Full fine-tuning's targets and export, with the SPSA update of MeZO (masked by :meth:`masks`)."""
    lr_prior = (1e-7, 1e-5)  # MeZO (Malladi et al. 2023: 1e-7..1e-6)

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return ForwardOnly(groups, lr, weight_decay)

    def masks(self, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Which entries of each parameter are perturbed this step (None: all of them)."""
        return [None] * len(params)

    @torch.no_grad()
    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], float], step: int,
               max_grad_norm: float | None = None) -> tuple[float, float]:
        """One MeZO step (Algorithm 1) with the step's seed: returns (the step's loss, ‖g · z‖ before clipping).
        The loop passes no ``max_grad_norm`` (``capabilities.clipping`` is False); a caller of this function may.

        Each group's learning rate (λ for W_v's, the schedule) and weight decay apply to its own parameters;
        entries outside the mask change by nothing, weight decay included.
        """
        assert self.ctx is not None, "prepare() must run first"
        params = [q for g in optimizer.param_groups for q in g["params"]]
        masks = self.masks(params)
        seed = step_seed(self.ctx.seed, step)
        was_training = model.training
        model.eval()  # the same function at θ ± εz: no dropout
        try:
            g, loss, sq = projected_gradient(params, loss_fn, float(self.args.eps), seed, masks)
        finally:
            model.train(was_training)
        norm = abs(g) * sq ** 0.5
        if max_grad_norm and norm > 0:
            g *= min(1.0, max_grad_norm / (norm + 1e-6))  # the rule of torch.nn.utils.clip_grad_norm_
        z = directions(params, seed)
        i = 0
        for group in optimizer.param_groups:
            lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
            for p in group["params"]:
                step_dir = next(z) * g
                if wd:
                    step_dir.add_(p, alpha=wd)
                if masks[i] is not None:
                    step_dir.mul_(masks[i])
                p.sub_(step_dir, alpha=lr)
                i += 1
        if isinstance(optimizer, ForwardOnly):
            optimizer.stepped()
        return loss, norm

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return []


@register("mezo")
class Mezo(ZerothOrder):
    summary = "MeZO (Malladi et al. 2023): zeroth-order SPSA from two forward passes, no backward (eps)"
    Args = MezoArgs
    capabilities = _ZO_CAPABILITIES


@register("sparse_mezo")
class SparseMezo(ZerothOrder):
    summary = "Sparse MeZO (Liu et al. 2024): MeZO on the small-magnitude entries only (sparsity, eps)"
    Args = SparseMezoArgs
    capabilities = _ZO_CAPABILITIES

    def masks(self, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        return [p.detach().abs() <= threshold(p.detach(), self.args.sparsity).to(p.device, p.dtype) for p in params]

    def perturbed_per_step(self, model: nn.Module) -> int:
        """The entries the next step perturbs (|θ| ≤ h of each tensor, about 1 − sparsity of them). The trainable
        count stays the whole tensors': the mask follows the weights, so over a run any entry may move."""
        params = [p for p in model.parameters() if p.requires_grad]
        return sum(int(m.sum()) for m in self.masks(params))


def threshold(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """h: the smallest |θ| value such that a fraction ≥ 1 − sparsity of the entries satisfy |θ| ≤ h."""
    flat = weight.abs().flatten().double()
    k = max(1, int(np.ceil((1 - sparsity) * flat.numel() - 1e-9)))
    return torch.kthvalue(flat, k).values.reshape(1)
