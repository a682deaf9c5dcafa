"""IncreLoRA, incremental parameter allocation (Zhang et al. 2023, "IncreLoRA: Incremental Parameter Allocation
Method for Parameter-Efficient Fine-tuning", arXiv 2308.12043; reference code github.com/FeiyuZhang98/IncreLoRA,
``loralib/loralib/increlora.py`` and the trainer's ``compute_svd_orth_regu`` and ``Multi_LambdaLR``).

The update of each adapted weight is the paper's SVD-like sum of rank-1 components (AdaLoRA's P Λ Q cut into
components, as the reference's ``SVDLinear`` stores them): ΔW = α / r_t · Σ_i λ_i P_i Q_i, P_i (out × 1) = ``B.i``,
Q_i (1 × in) = ``A.i``, λ_i = ``E.i``, r_t the module's current rank. (The stored copies of the paper available here
hold its abstract only; every rule below is read from the reference code, file and function named.) The rank
*grows*, where AdaLoRA prunes:

- every module starts at ``init_r`` components (1; λ = 0, P, Q ~ N(0, 0.02²)), the budget is ``rank`` per module on
  average (the total n · rank);
- **importance** (``SVDLinear.backward_hook``, on ΔW; under fp16 the GradScaler's loss scale is divided out of the
  kept ∂L/∂ΔW): s_t = Σ |ΔW ⊙ ∂L/∂ΔW| / √(out · in), smoothed as AdaLoRA's
  Ī_t = β₁ Ī_{t−1} + (1 − β₁) s_t, Ū_t = β₂ Ū_{t−1} + (1 − β₂) |s_t − Ī_t|, score S = Ī_t · Ū_t, updated every step
  until the budget is reached;
- **allocation** (``RankAllocator.update_and_increase``, ``increase_to_target_rank``): after ``init_warmup``
  steps, every ``incre_interval`` steps (the reference's global step g, g > init_warmup and g mod interval = 0),
  the ``top_h`` modules of highest score each gain ``incre_rank`` ranks, until the total reaches the budget;
- **advance learning** (``add_reserve_param``): every module holds ``incre_rank`` reserve components with
  λ = 10⁻⁵ frozen and P, Q training from the start; a module that gains ranks turns its reserve λ trainable and
  gets new reserves. When the budget is reached the reserves leave the update (λ = 0, as the reference zeroes
  them) and are frozen (the reference goes on training their P, Q through the orthogonality term alone; here they
  no longer train or count, and the term reads them as they were);
- **restart warm-up**: the parameters a growth adds join the optimizer as new groups (W_v's at λ × the rate, by the
  strategy) that warm up again and decay over the steps left (:class:`efficientft.train.Schedule`, the reference's
  ``Multi_LambdaLR``); they are clipped with the rest;
- the loss adds ``reg_orth_coef`` · mean over modules of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F over all components (the
  trainer's ``compute_svd_orth_regu``, its SVD-form orthogonality), as a gradient in :meth:`after_backward`.

Defaults follow the reference's GLUE scripts: α = 16 (a fixed α / r_t), orthogonality 0.1, β₁ = β₂ = 0.85,
incre_rank = rank / 2 (its table 2→1, 4→2, 6→3, 8→4); ``init_warmup`` = ``incre_interval`` = 2% of the run (its
scripts use 100–1000 steps, 2–3% of their runs), ``top_h`` = 1/12 of the adapted modules (its SST-2 rank-8 script
picks 6 of 72). A run too short to reach the budget is refused before training. The growth step, the rank pattern,
the scores and the groups that joined are method state: a checkpoint after a growth resumes exactly.

Where this differs from the reference, and why: exactly ``top_h`` modules grow (ties in module order; the
reference takes every score ≥ the h-th, so ties grow more) and the last round adds only what is left, so the
total lands on the budget (the reference's may overshoot by (top_h − 1) · incre_rank); the first reserves exist
from the start, in the first groups (the reference adds them as a group before its first step, on the same
schedule); a joined group's restarted warm-up is the run's ``warmup_ratio`` of the run (its scripts set
warm-up = interval) and starts at this loop's first-step factor, where the reference's runs one step at the full
rate and one at 0 (its LambdaLR quirk).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.fused import out_major_weight, weight_shape
from ..models.roles import Target
from ..strategy import Strategy, build_param_groups
from . import register
from ._decomp import DENSE_BASE, frozen, set_out_major
from ._inject import WrapsTargets, merge_modules
from .args import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPEN_FRACTION,
    POSITIVE,
    POSITIVE_INT,
    MethodArgs,
    arg,
)
from .base import TRAINABLE_FILE, Context
from .capabilities import Capabilities

INIT_STD = 0.02  # P, Q of every component (the reference's normal_(std=0.02))
RESERVE_E = 1e-5  # λ of a reserve component while it learns in advance


@dataclass
class IncreLoraArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # the average rank per module at the end (the budget: rank × modules)
    init_r: int = arg(1, POSITIVE_INT)  # components each module starts with
    alpha: float = arg(16.0, POSITIVE)  # ΔW is scaled by alpha / (the module's current rank)
    dropout: float = arg(0.0, FRACTION)
    top_h: int = arg(0, NON_NEGATIVE_INT, note="0: 1/12 of the adapted modules")  # modules that grow per round
    incre_rank: int = arg(0, NON_NEGATIVE_INT, note="0: rank // 2")  # ranks a chosen module gains per round
    init_warmup: float = arg(0.02, NON_NEGATIVE)  # steps before the first growth: a fraction of the run (< 1) or steps
    incre_interval: float = arg(0.02, POSITIVE)  # steps between growths: a fraction of the run (< 1) or steps
    beta1: float = arg(0.85, OPEN_FRACTION)  # EMA of the sensitivity
    beta2: float = arg(0.85, OPEN_FRACTION)  # EMA of the uncertainty
    reg_orth_coef: float = arg(0.1, NON_NEGATIVE)  # weight of the orthogonality regulariser

    def check(self) -> None:
        if self.init_r > self.rank:
            raise ValueError(f"init_r ({self.init_r}) must be at most the target rank ({self.rank}): the rank grows "
                             "from init_r to rank.")
        for name in ("init_warmup", "incre_interval"):
            v = getattr(self, name)
            if v >= 1 and not float(v).is_integer():
                raise ValueError(f"{name} must be a fraction of the run in [0, 1) or a whole number of steps, "
                                 f"got {v!r}.")


def steps_of(value: float, total: int) -> int:
    """A phase given as a fraction of the run (< 1) or as steps."""
    return int(value * total + 1e-9) if value < 1 else int(value)


class IncreLinear(nn.Module):
    """W x + (ΔW dropout(x)), ΔW = α / r · Σ_i λ_i P_i Q_i over the ``active`` components, plus the reserves."""

    def __init__(self, base: nn.Module, init_r: int, reserve: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = frozen(base)
        self.out_f, self.in_f = weight_shape(base)
        w = out_major_weight(base)
        self.dtype, self.device = w.dtype, w.device
        self.alpha = alpha
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.A, self.B, self.E = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        self.active = 0
        self.scoring = False  # keep ∂L/∂ΔW for the importance score (while the budget is not reached)
        self.grad: torch.Tensor | None = None
        self.add_components(init_r, reserve=False)
        self.add_components(reserve, reserve=True)

    def add_components(self, n: int, reserve: bool) -> list[nn.Parameter]:
        """Append ``n`` components (active: λ = 0 trainable; reserve: λ = 10⁻⁵ frozen); returns their P, Q, λ."""
        new = []
        for _ in range(n):
            a = nn.Parameter(torch.empty(1, self.in_f, dtype=self.dtype, device=self.device))
            b = nn.Parameter(torch.empty(self.out_f, 1, dtype=self.dtype, device=self.device))
            nn.init.normal_(a, 0.0, INIT_STD)
            nn.init.normal_(b, 0.0, INIT_STD)
            e = nn.Parameter(torch.full((1, 1), RESERVE_E if reserve else 0.0, dtype=self.dtype, device=self.device),
                             requires_grad=not reserve)
            self.A.append(a)
            self.B.append(b)
            self.E.append(e)
            new += [a, b, e]
        if not reserve:
            self.active += n
        return new

    def activate(self, n: int) -> list[nn.Parameter]:
        """The first ``n`` reserve components join the update (their λ trains from now); returns those λ."""
        joined = [self.E[i] for i in range(self.active, self.active + n)]
        for e in joined:
            e.requires_grad = True
        self.active += n
        return joined

    def retire_reserve(self) -> list[nn.Parameter]:
        """The budget is reached: the reserve components leave the update (λ = 0) and stop training (λ, P, Q
        frozen: they act nowhere, so they are not trained, counted or given FLOPs); returns their P, Q."""
        retired = []
        with torch.no_grad():
            for i in range(self.active, len(self.E)):
                self.E[i].zero_()
                for q in (self.E[i], self.A[i], self.B[i]):
                    q.requires_grad = False
                retired += [self.A[i], self.B[i]]
        return retired

    def delta(self) -> torch.Tensor:
        """ΔW (out × in) over every component (the reserves' λ is 10⁻⁵ while they learn in advance, then 0)."""
        a, b, e = torch.cat(list(self.A)), torch.cat(list(self.B), 1), torch.cat(list(self.E))
        return (b @ (a * e)) * (self.alpha / self.active)

    def _keep_grad(self, g: torch.Tensor) -> None:
        """Sum ∂L/∂ΔW over a step's micro-batches. A step's first backward reaches ΔW before any factor's gradient
        exists (the optimizer set them to None): then what is kept is from an earlier step that no hook consumed (an
        fp16 step the GradScaler skipped, with inf gradients) and is dropped."""
        fresh = self.A[0].grad is None
        self.grad = g.detach() if fresh or self.grad is None else self.grad + g.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta()
        if self.scoring and torch.is_grad_enabled() and delta.requires_grad:
            delta.register_hook(self._keep_grad)
        return self.base(x) + F.linear(self.dropout(x), delta.to(x.dtype))

    @torch.no_grad()
    def sensitivity(self, loss_scale: float = 1.0) -> float:
        """s = Σ |ΔW ⊙ ∂L/∂ΔW| / √(out · in) for the step's gradient (summed over its micro-batches), then cleared.
        The kept gradient is the backward's, ``loss_scale`` times the true one under fp16 (the GradScaler unscales
        the parameters' gradients only): divided out, so the score does not jump when the scale changes."""
        if self.grad is None:
            return 0.0
        s = float((self.delta() * (self.grad / loss_scale)).abs().sum() / math.sqrt(self.out_f * self.in_f))
        self.grad = None
        return s

    def orthogonality(self) -> torch.Tensor:
        """‖PᵀP − I‖_F + ‖QQᵀ − I‖_F over all components (the reference's ``compute_svd_orth_regu`` term)."""
        a, b = torch.cat(list(self.A)), torch.cat(list(self.B), 1)
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        return torch.linalg.matrix_norm(a @ a.t() - eye) + torch.linalg.matrix_norm(b.t() @ b - eye)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        set_out_major(self.base, out_major_weight(self.base) + self.delta())
        return self.base


def _sites(model: nn.Module) -> list[tuple[str, IncreLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, IncreLinear)]


@register("increlora")
class IncreLoRA(WrapsTargets):
    summary = ("IncreLoRA (Zhang et al. 2023): rank-1 components added during training to the modules of highest "
               "importance, until the rank budget is reached")
    Args = IncreLoraArgs
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=DENSE_BASE, merge=True,
                                export="efficientft", grows=True)
    lr_prior = (1e-4, 3e-3)  # the reference's GLUE scripts: 3.5e-4..2.2e-3
    wrapper = IncreLinear

    def __init__(self, args: Any = None) -> None:
        super().__init__(args)
        self.ipt: dict[str, float] = {}
        self.avg: dict[str, float] = {}
        self.unc: dict[str, float] = {}
        self.joined: list[tuple[int, list[str]]] = []  # (step, names of the parameters that joined the optimizer)
        self.done = False
        self.retired: set[str] = set()  # the reserves' P, Q once the budget is reached (frozen)
        self._plan: tuple[Strategy, float, float] | None = None
        self._groups: list[dict] = []
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        # 4 modules (q, v of 2 layers) from 1 to 2 ranks: one round of all four after a third of the run (8 steps:
        # at step 4, before the resume test's checkpoint; 3 steps: at step 3)
        return {"rank": 2, "top_h": 4, "init_warmup": 0.34, "incre_interval": 1}

    @property
    def incre_rank(self) -> int:
        return self.args.incre_rank or max(1, self.args.rank // 2)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        a = self.args
        return IncreLinear(base, a.init_r, self.incre_rank, float(a.alpha), float(a.dropout))

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        model = super().prepare(model, targets, ctx)
        self.schedule(len(targets), ctx.total_steps)  # a run that cannot reach the budget fails here
        for _, m in _sites(model):
            m.scoring = True
        if self.args.init_r == self.args.rank:  # nothing to grow
            self.finish(model)
        return model

    # ------------------------------------------------------------------ the budget schedule
    def top_h(self, modules: int) -> int:
        return self.args.top_h or max(1, math.ceil(modules / 12))

    def schedule(self, modules: int, total: int) -> tuple[int, int]:
        """(init_warmup, interval) in steps; an error when the run ends before the budget is reached."""
        a = self.args
        warmup, interval = steps_of(a.init_warmup, total), max(1, steps_of(a.incre_interval, total))
        per_round = min(self.top_h(modules), modules) * self.incre_rank
        rounds = math.ceil(modules * (a.rank - a.init_r) / per_round)
        first = (warmup // interval + 1) * interval  # the first g > init_warmup with g mod interval = 0
        last_step = first + (rounds - 1) * interval + 1 if rounds else 0  # g = step - 1
        if total and last_step > total:
            raise ConfigError(
                f"increlora: growing {modules} modules from rank {a.init_r} to {a.rank} takes {rounds} rounds of "
                f"{per_round} ranks, one every {interval} step{'s' if interval > 1 else ''} after step {warmup}, to "
                f"step {last_step}; the run has {total} "
                "steps. Train longer, or raise top_h or incre_rank, or lower init_warmup, incre_interval or rank."
            )
        return warmup, interval

    # ------------------------------------------------------------------ optimizer groups that grow
    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        """The groups of the parameters trained from the start, then one set per growth (``start``: its step), in
        the order the run added them, so a resumed optimizer has the uninterrupted one's layout."""
        self._plan = (strategy, lr, weight_decay)
        later = {n for _, names in self.joined for n in names}
        groups = self._grouped(model, lambda n: n not in later, 0)
        for step, names in self.joined:
            groups += self._grouped(model, set(names).__contains__, step)
        self._groups = groups
        return groups

    def _grouped(self, model: nn.Module, keep: Any, start: int) -> list[dict]:
        strategy, lr, weight_decay = self._plan
        out = []
        for g in build_param_groups(model, self.param_roles(model), strategy, lr, weight_decay):
            kept = [(n, p) for n, p in zip(g["names"], g["params"], strict=True) if keep(n)]
            if kept:
                g["names"], g["params"] = [n for n, _ in kept], [p for _, p in kept]
                if start:
                    g.update(start=start, initial_lr=g["lr"])
                out.append(g)
        return out

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        self._optimizer = super().optimizer(groups, lr, weight_decay)
        return self._optimizer

    # ------------------------------------------------------------------ the step hook
    def regulariser(self, model: nn.Module) -> torch.Tensor:
        return torch.stack([m.orthogonality() for _, m in _sites(model)]).mean() / 2  # mean over the 2n terms

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Add the orthogonality gradient; update the scores; grow where the schedule says (the reference's
        ``update_and_increase``, after the backward pass and before the optimizer step, at g = step − 1)."""
        if self.args.reg_orth_coef:
            (self.args.reg_orth_coef * self.regulariser(model)).backward()
        if self.done:
            return
        b1, b2 = float(self.args.beta1), float(self.args.beta2)
        sites = _sites(model)
        for name, m in sites:
            s = m.sensitivity(self.loss_scale)
            self.ipt[name] = s
            self.avg[name] = b1 * self.avg.get(name, 0.0) + (1 - b1) * s
            self.unc[name] = b2 * self.unc.get(name, 0.0) + (1 - b2) * abs(s - self.avg[name])
        warmup, interval = self.schedule(len(sites), self.ctx.total_steps if self.ctx else 0)
        g = step - 1
        if g > warmup and g % interval == 0:
            self.grow(model, step)

    def scores(self) -> dict[str, float]:
        """S = Ī · Ū of every module."""
        return {n: self.avg.get(n, 0.0) * self.unc.get(n, 0.0) for n in self.avg}

    def ranks(self, model: nn.Module) -> dict[str, int]:
        return {n: m.active for n, m in _sites(model)}

    def budget(self, model: nn.Module) -> int:
        return self.args.rank * len(_sites(model))

    @torch.no_grad()
    def grow(self, model: nn.Module, step: int) -> None:
        """The ``top_h`` modules of highest score gain ``incre_rank`` ranks each (the last round: what is left)."""
        sites = _sites(model)
        left = self.budget(model) - sum(m.active for _, m in sites)
        scores = self.scores()
        order = sorted(range(len(sites)), key=lambda i: -scores.get(sites[i][0], 0.0))  # stable: ties in model order
        new: list[nn.Parameter] = []
        for i in order[: min(self.top_h(len(sites)), len(sites))]:
            add = min(self.incre_rank, left)
            if add <= 0:
                break
            m = sites[i][1]
            new += m.activate(add)
            new += [p for p in m.add_components(add, reserve=True) if p.requires_grad]
            left -= add
        if left == 0:
            self.finish(model)
        names = {id(p): n for n, p in model.named_parameters()}
        joined = [names[id(p)] for p in new if p.requires_grad]  # not the last round's reserves: retired at once
        self.joined.append((step, joined))
        if self._optimizer is not None and self._plan is not None:
            for g in self._grouped(model, set(joined).__contains__, step):
                self._optimizer.add_param_group(g)  # the same dict: torch keeps it
                self._groups.append(g)  # the run's groups (clipped with the rest)

    def finish(self, model: nn.Module) -> None:
        """The budget is reached: the reserves leave the update and the optimizer, the scores stop."""
        self.done = True
        retired: list[nn.Parameter] = []
        for name, m in _sites(model):
            self.retired |= {f"{name}.{k}.{i}" for k in ("A", "B") for i in range(m.active, len(m.E))}
            retired += m.retire_reserve()
            m.scoring = False
            m.grad = None
        self._drop(retired)

    def _drop(self, params: list[nn.Parameter]) -> None:
        """Frozen parameters leave the optimizer's groups (and their state) and the run's, so the optimizer has the
        layout a resumed run builds from the trainable parameters (a group left empty goes)."""
        gone = {id(q) for q in params}
        groups = {id(g): g for g in [*self._groups, *(self._optimizer.param_groups if self._optimizer else [])]}
        for g in groups.values():
            kept = [i for i, q in enumerate(g["params"]) if id(q) not in gone]
            for key in ("params", "names"):
                if key in g:
                    g[key] = [g[key][i] for i in kept]
        self._groups[:] = [g for g in self._groups if g["params"]]
        if self._optimizer is not None:
            self._optimizer.param_groups[:] = [g for g in self._optimizer.param_groups if g["params"]]
            for q in params:
                self._optimizer.state.pop(q, None)

    # ------------------------------------------------------------------ state (exact resume) and export
    def _structure(self, model: nn.Module) -> dict[str, list[int]]:
        return {n: [m.active, len(m.E)] for n, m in _sites(model)}

    def _rebuild(self, model: nn.Module, structure: dict[str, list[int]], done: bool) -> None:
        sites = dict(_sites(model))
        unknown = [n for n in structure if n not in sites]
        if unknown:
            raise ConfigError(f"method 'increlora': saved ranks for modules this model lacks: {unknown[:3]}.")
        for n, (active, count) in structure.items():
            m = sites[n]
            if active < m.active or count - len(m.E) != active - m.active:
                raise ConfigError(f"method 'increlora': saved ranks of {n} ({active} of {count}) do not follow "
                                  f"from its start ({m.active} of {len(m.E)}).")
            while m.active < active:  # as the run grew it: reserves join, as many new ones follow
                add = min(len(m.E) - m.active, active - m.active)
                m.activate(add)
                m.add_components(add, reserve=True)
        if done:
            self.finish(model)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        # the retired reserves are frozen (not in the checkpoint's trainable weights), but the orthogonality term
        # still reads their P, Q: kept here, so a resumed run is exact
        params = dict(model.named_parameters())
        return {"structure": self._structure(model), "done": self.done, "ipt": dict(self.ipt), "avg": dict(self.avg),
                "unc": dict(self.unc), "joined": [[s, list(n)] for s, n in self.joined],
                "retired": {n: params[n].detach() for n in sorted(self.retired)}}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        self._rebuild(model, {n: list(v) for n, v in state["structure"].items()}, bool(state["done"]))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state.get("retired", {}).items():
                params[n].copy_(t)
        for key in ("ipt", "avg", "unc"):
            setattr(self, key, {n: float(v) for n, v in state[key].items()})
        self.joined = [(int(s), list(n)) for s, n in state["joined"]]

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        sites = [n for n, _ in _sites(model)]
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
                   if p.requires_grad or any(n.startswith(s + ".") and ".base." not in n for s in sites)}
        meta = {"method": self.name, "structure": json.dumps(self._structure(model)), "done": json.dumps(self.done)}
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata=meta)
        return {"format": "efficientft-increlora", "total_rank": sum(m.active for _, m in _sites(model))}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(out_dir / TRAINABLE_FILE), "pt") as f:
            meta = f.metadata() or {}
        if "structure" not in meta:
            raise ConfigError(f"{out_dir}: not an IncreLoRA export (no ranks in its metadata).")
        model = self.prepare(base, targets, ctx)
        self._rebuild(model, json.loads(meta["structure"]), json.loads(meta["done"]))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in load_file(str(out_dir / TRAINABLE_FILE)).items():
                if n not in params:
                    raise ConfigError(f"{out_dir}: the export has tensors this model lacks: {n}.")
                params[n].copy_(t)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, IncreLinear)
