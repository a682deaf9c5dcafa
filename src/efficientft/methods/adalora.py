"""AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023,
arXiv 2303.10512).

Each adapted weight gets an SVD-shaped update ΔW = B·diag(E)·A (``lora_B``, ``lora_E``, ``lora_A``) that starts at
rank ``init_r``. Every ``delta_t`` steps the singular values E of the least important triplets (importance: the
smoothed sensitivity |θ·∇θ| times its uncertainty, exponential moving averages with ``beta1``/``beta2``) are masked
to zero, until the total budget falls from n·init_r to n·rank along the paper's cubic schedule: constant for the
first ``tinit`` steps, then b(t) = b(T) + (b(0) − b(T))·(1 − (t − tinit)/(T − tinit − tfinal))³, then fixed for the
last ``tfinal`` steps. An orthogonality regulariser on A and B (weight ``orth_reg_weight``; PEFT computes it as the
mean of ‖AAᵀ−I‖_F and ‖BᵀB−I‖_F over all factors) keeps the update close to an SVD; PEFT adds it to the loss in
the forward pass whenever labels are given, so during training only (checked by a test).

``rank`` is the *target* average rank (PEFT's ``target_r``), so ``--rank`` means the same final size as for LoRA;
``init_r`` defaults to ⌈1.5·rank⌉, the paper's initial budget b(0) = 1.5·b(T). ``tinit``/``tfinal`` are fractions
of the run when below 1, step counts otherwise; PEFT's ``total_step`` is the run's step count. The reallocation
runs in :meth:`after_step` (after the optimizer step, before gradients are zeroed), with the loop's 1-based step,
so the final masking happens at step ``total − tfinal``.

The trainable parameters are A, B and E of every adapted weight at the initial rank (masking zeroes E entries but
they stay in the optimizer) plus the head; ``ranknum`` is a frozen buffer-like parameter. With α = init_r (the
default) the scale α/init_r is 1.

Learning rate: the regulariser pins A's rows and B's columns near unit norm, so the update's size is set by the
few E entries, each moving about one learning rate per Adam step. AdaLoRA therefore needs a larger rate than LoRA
on a short budget: 250 steps on SST-2 with MiniLM (Q/V, rank 8) stayed at chance with lr 1e-3 (0.510) and reached
0.797 with 5e-3 and 0.820 with 1e-2 (LoRA: 0.802 with 1e-3); without the regulariser 1e-3 reached 0.775. The
paper's rates (5e-4 to 1.2e-3 on DeBERTaV3-base) come with budgets of many epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.roles import Target
from ..schema import Rule
from . import register
from .args import NON_NEGATIVE, OPEN_FRACTION, POSITIVE_INT, arg
from .base import Context
from .capabilities import Capabilities
from .lora import LoraArgs
from .peft_backed import PeftMethod


@dataclass
class AdaLoraArgs(LoraArgs):
    init_r: int | None = arg(None, Rule("int", 1, None, optional=True))  # None: ceil(1.5 * rank)
    tinit: float = arg(0.1, NON_NEGATIVE)  # initial warm-up without pruning: a fraction of the run (< 1) or steps
    tfinal: float = arg(0.2, NON_NEGATIVE)  # final fine-tuning at the target budget: a fraction of the run (< 1) or steps
    delta_t: int = arg(1, POSITIVE_INT)  # steps between two budget allocations (PEFT's deltaT)
    beta1: float = arg(0.85, OPEN_FRACTION)  # EMA of the sensitivity
    beta2: float = arg(0.85, OPEN_FRACTION)  # EMA of the uncertainty
    orth_reg_weight: float = arg(0.5, NON_NEGATIVE)  # γ of the orthogonality regulariser (PEFT's default)

    def check(self) -> None:
        if self.init_r is not None and self.init_r < self.rank:
            raise ValueError(f"init_r ({self.init_r}) must be at least the target rank ({self.rank}).")
        for name in ("tinit", "tfinal"):
            v = getattr(self, name)
            if v >= 1 and not float(v).is_integer():
                raise ValueError(f"{name} must be a fraction of the run in [0, 1) or a whole number of steps, "
                                 f"got {v!r}.")


def schedule_steps(value: float, total: int) -> int:
    """A phase length given as a fraction of the run (< 1) or as steps."""
    return int(value * total + 1e-9) if value < 1 else int(value)


@register("adalora")
class AdaLoRA(PeftMethod):
    summary = "AdaLoRA (Zhang et al. 2023): SVD-form LoRA whose rank budget is pruned to the target, via PEFT"
    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")
    Args = AdaLoraArgs

    @property
    def init_r(self) -> int:
        return self.args.init_r if self.args.init_r is not None else math.ceil(1.5 * self.args.rank)

    @property
    def max_rank(self) -> int:
        return self.init_r

    @property
    def alpha(self) -> float:
        return float(self.args.alpha if self.args.alpha is not None else self.init_r)

    def rank_note(self) -> str:
        return f"AdaLoRA starts at init_r = {self.init_r} (default ceil(1.5·rank)); lower rank or init_r."

    def phases(self, total: int) -> tuple[int, int]:
        """(tinit, tfinal) in steps for a run of ``total`` steps; an error when no budgeting phase is left."""
        tinit, tfinal = schedule_steps(self.args.tinit, total), schedule_steps(self.args.tfinal, total)
        if tinit >= total - tfinal:
            raise ConfigError(
                f"adalora: tinit={tinit} and tfinal={tfinal} steps leave no step to reduce the rank budget in a "
                f"run of {total} steps; lower tinit/tfinal or train longer."
            )
        return tinit, tfinal

    peft_config_name = "AdaLoraConfig"

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        if ctx.total_steps <= 0:
            raise ConfigError("adalora needs the run's number of steps (its rank budget schedule spans them).")
        tinit, tfinal = self.phases(ctx.total_steps)
        a = self.args
        return dict(
            init_r=self.init_r, target_r=a.rank, lora_alpha=self.alpha, lora_dropout=a.dropout, tinit=tinit,
            tfinal=tfinal, deltaT=a.delta_t, beta1=float(a.beta1), beta2=float(a.beta2),
            orth_reg_weight=float(a.orth_reg_weight), total_step=ctx.total_steps,
        )

    def after_step(self, model: nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The rank allocator's importance statistics and the rank pattern chosen so far."""
        alloc = model.base_model.rankallocator
        return {"ipt": dict(alloc.ipt), "exp_avg_ipt": dict(alloc.exp_avg_ipt), "exp_avg_unc": dict(alloc.exp_avg_unc),
                "rank_pattern": model.peft_config["default"].rank_pattern}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        alloc = model.base_model.rankallocator
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(alloc, name, dict(state[name]))
        model.peft_config["default"].rank_pattern = state["rank_pattern"]

    def active_ranks(self, model: nn.Module) -> dict[str, int]:
        """The rank each adapted module keeps now (its unmasked singular values), by module name."""
        pattern = model.peft_config["default"].rank_pattern or {}
        out: dict[str, int] = {}
        for name, p in model.named_parameters():
            if ".lora_E." in name:
                module = name.split(".lora_E.")[0].removeprefix("base_model.model.")
                key = next((k for k in pattern if k.split(".lora_E")[0] == module), None)
                out[module] = int(sum(pattern[key])) if key is not None else p.shape[0]
        return out
