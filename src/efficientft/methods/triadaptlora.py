"""TriAdaptLoRA, Triangular Adaptive Low-Rank Adaptation (Liang, Wang & Zeng 2025, "TriAdaptLoRA: Brain-Inspired
Triangular Adaptive Low-Rank Adaptation for Parameter-Efficient Fine-Tuning", arXiv 2501.08008; reference code: the
first author's PEFT fork, github.com/YaoLiang2023/DiverValue-Bench, ``peft/src/peft/tuners/triadaptlora.py``, read
at its latest revision 448a1bb). Only the paper's abstract could be read from here; the three parts it names are
implemented as that reference code computes them:

1. **Triangular split** of the transformation matrix. Each adapted weight gets ΔW = s · B C A with A (r × d_in),
   B (d_out × r) and C (r × r) = L + U, L block-lower- and U block-upper-triangular. The rank grows in blocks; a
   block of k new ranks at rank r brings k new rows of A, k new columns of B, k new *rows* of L (k × (r + k), the
   new row band, every column up to r + k) and k new *columns* of U ((r + k) × k). What exists is never resized:
   earlier blocks keep their values and optimizer state, only the border of C is new (the reference's ``lora_C_row``
   / ``lora_C_col`` parameter lists, assembled by zero-padding into C). New blocks: A ~ N(0, 0.02²), B = 0, L and U
   by ``torch.nn.init.eye_`` on their own rectangular shape (ones at (i, i) of the block), so the first block's C is
   2·I; s = ``scale`` = 2, the constant of the reference's ``loraW`` (its first revision used α/r and zero C, B,
   which gives zero gradients to every factor). As in the reference, U's ones of a later block sit in old rows, so
   a growth step changes ΔW by s · B_old[:, :k] A_new (B_new = 0 leaves L's ones without effect at that step).
2. **Importance** of a weight: its normalised Frobenius norm ‖C‖_F / n_b (n_b: the number of blocks it holds), and
   the score is that value's change since the previous allocation (the reference's ``compute_score``: the first
   previous value is taken at initialisation).
3. **Adaptive rank growth** with a dynamic threshold, every ``incre_interval`` steps after ``init_warmup`` while
   the total rank is below the budget n · ``rank`` (n adapted weights; ``rank`` is the target average, the
   reference's ``reference_rank``): with c = (t − t_w) / (T − t_w), the number of weights to grow is
   ⌊(R_target − R_now) · c⌋ (``growth=linear``, the paper's best) or ⌊exp(c · ln(R_target − R_now))⌋
   (``exponential``, the reference's "non-linear"), at least 1; the threshold is that many-th largest score, and
   every weight whose score reaches it grows by ``incre_rank`` (0: ``rank`` // 2, the reference's table). A weight is
   never grown past min(d_out, d_in) (the reference has no such cap; it matters only for tiny weights).

The loss adds the reference's orthogonality regulariser ``orth_reg_weight`` · mean(‖A Aᵀ − I‖_F, ‖Bᵀ B − I‖_F) over
the adapted weights (A, B: all blocks concatenated), as a gradient in :meth:`after_backward` (SoRA's way: the same
gradient as adding it to the loss). Growth runs in :meth:`after_step`, with the loop's 1-based step and T its step
count. New parameters join the optimizer group of their weight's first block: W_v's learn at λ × lr and all follow
the run's schedule and weight decay (the reference adds them as new groups at the optimizer's base rate, outside the
scheduler, with weight decay 0: an artefact of ``add_param_group``, not a rule of the method). The blocks and the
order in which they joined the optimizer are method state, so a resumed run rebuilds them before its optimizer is
built and restores the optimizer exactly; exports carry the ranks. A multi-process run is refused, as for every method that declares
``grows`` (DDP averages the gradients of the parameters that existed when it wrapped the model, not of blocks added
later).

Capabilities: linear targets and row slices of a fused projection (each role's slice is a weight of its own,
``c_attn.tri.v``); λ reaches W_v's factors; merge; our export format. The trainable count is every stored scalar
(the diagonal squares of L and U overlap; the count is what the optimizer holds, and it grows during training).
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
from ..strategy import Strategy
from . import register
from ._adapters import float_like
from ._decomp import frozen, set_out_major
from ._inject import WrapsTargets
from .args import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, MethodArgs, arg, choice
from .base import TRAINABLE_FILE, Context, load_trainable
from .capabilities import Capabilities

INIT_STD = 0.02  # the reference's std of a new block of A
FACTORS = ("A", "B", "L", "U")  # the order in which a new block's tensors join the optimizer


@dataclass
class TriAdaptArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # the target average rank (reference_rank): the budget is n · rank
    init_rank: int = arg(1, POSITIVE_INT)  # every weight's first block (the reference's init_rank)
    incre_rank: int = arg(0, NON_NEGATIVE_INT, note="0: rank // 2")  # ranks one growth adds (incre_rank_num)
    init_warmup: int = arg(0, NON_NEGATIVE_INT)  # steps before the first growth
    incre_interval: int = arg(1, POSITIVE_INT)  # steps between two allocations
    growth: str = arg("linear", choice("linear", "exponential"))  # the threshold's schedule
    scale: float = arg(2.0, POSITIVE)  # s in ΔW = s · B C A (the reference's constant 2)
    orth_reg_weight: float = arg(0.5, NON_NEGATIVE)  # the reference's default

    def check(self) -> None:
        if self.init_rank > self.rank:
            raise ValueError(f"init_rank {self.init_rank} is larger than rank {self.rank} (the target average rank "
                             "it grows to); give init_rank <= rank.")

    def step_rank(self) -> int:
        return self.incre_rank or max(1, self.rank // 2)


class TriFactors(nn.Module):
    """One weight's (or one role slice's) growing update B C A, C = L + U assembled from its blocks."""

    def __init__(self, d_in: int, rows: int) -> None:
        super().__init__()
        self.d_in, self.rows = d_in, rows
        self.A, self.B, self.L, self.U = (nn.ParameterList() for _ in FACTORS)
        self.previous = 0.0  # the normalised norm at the last allocation (the reference's preNormValue)

    @property
    def rank(self) -> int:
        return sum(a.shape[0] for a in self.A)

    def blocks(self) -> list[int]:
        return [a.shape[0] for a in self.A]

    def grow(self, k: int, like: torch.Tensor, init: bool = True) -> list[nn.Parameter]:
        """Add a block of k ranks (drawn as the reference draws them where ``init``, else zeros to be loaded)."""
        n = self.rank + k
        kw = {"dtype": like.dtype, "device": like.device}
        a, b = torch.zeros(k, self.d_in, **kw), torch.zeros(self.rows, k, **kw)
        lower, upper = torch.zeros(k, n, **kw), torch.zeros(n, k, **kw)
        if init:
            nn.init.normal_(a, 0.0, INIT_STD)
            nn.init.eye_(lower)
            nn.init.eye_(upper)
        new = [nn.Parameter(t) for t in (a, b, lower, upper)]
        for plist, p in zip((self.A, self.B, self.L, self.U), new, strict=True):
            plist.append(p)
        return new

    def core(self) -> torch.Tensor:
        """C = L + U (r × r): each row band of L padded on the right, each column band of U padded below."""
        r = self.rank
        lower = torch.cat([F.pad(x, (0, r - x.shape[1])) for x in self.L], 0)
        upper = torch.cat([F.pad(x, (0, 0, 0, r - x.shape[0])) for x in self.U], 1)
        return lower + upper

    def normalised_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.core().detach().float())) / len(self.L)

    def score(self) -> float:
        """The change of ‖C‖_F / n_b since the last allocation (and that value becomes the new reference)."""
        now = self.normalised_norm()
        out, self.previous = now - self.previous, now
        return out

    def factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.cat(list(self.A), 0).to(dtype)
        b = torch.cat(list(self.B), 1).to(dtype)
        return a, self.core().to(dtype), b

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a, c, b = self.factors(x.dtype)
        return F.linear(F.linear(F.linear(x, a), c), b)

    def delta_weight(self) -> torch.Tensor:
        a, c, b = self.factors(self.A[0].dtype)
        return b @ c @ a

    def orthogonality(self) -> torch.Tensor:
        """‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F (the reference's regulariser, before its mean)."""
        a, _, b = self.factors(self.A[0].dtype)
        eye = torch.eye(self.rank, dtype=a.dtype, device=a.device)
        return torch.linalg.matrix_norm(a @ a.T - eye) + torch.linalg.matrix_norm(b.T @ b - eye)


class TriAdaptProjection(nn.Module):
    """A frozen projection plus s · B C A on the rows [a, z) of each key (a whole weight: one key, every row)."""

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], scale: float, init_rank: int,
                 like: torch.Tensor) -> None:
        super().__init__()
        self.base = frozen(base)
        self.scale = float(scale)
        self.ranges = dict(sorted(slices.items(), key=lambda kv: kv[1]))
        d_in = weight_shape(base)[1]
        self.tri = nn.ModuleDict({k: TriFactors(d_in, z - a) for k, (a, z) in self.ranges.items()})
        for f in self.tri.values():
            f.grow(init_rank, like)
            f.previous = f.normalised_norm()  # the reference scores once at initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = y.shape[-1]
        parts, at = [], 0
        for key, (a, z) in self.ranges.items():
            d = self.scale * self.tri[key].delta(x.to(y.dtype))
            if (a, z) == (0, rows):
                return y + d
            parts += [y[..., at:a], y[..., a:z] + d]
            at = z
        parts.append(y[..., at:])
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base).clone()
        for key, (a, z) in self.ranges.items():
            w[a:z] += self.scale * self.tri[key].delta_weight().to(w.dtype)
        set_out_major(self.base, w)
        return self.base


def sites(model: nn.Module) -> list[tuple[str, TriFactors]]:
    """Every adapted weight's factors (by module name), in the model's order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TriFactors)]


@register("triadaptlora")
class TriAdaptLoRA(WrapsTargets):
    summary = ("TriAdaptLoRA (Liang et al. 2025): ΔW = s·B(L+U)A, L/U triangular; ranks grow where ‖C‖_F/n "
               "rose most, under a linear threshold schedule")
    Args = TriAdaptArgs
    capabilities = Capabilities(rank=True, fused_slices=True, merge=True, export="efficientft", grows=True,
                                quantized_base_reason="its factors are merged into, and sized from, the dense base "
                                "weight, and it has not been tested on a quantized base")
    lr_prior = (1e-4, 3e-3)  # LoRA's (the paper compares at LoRA's learning rates)
    wrapper = TriAdaptProjection

    def __init__(self, args: Any = None) -> None:
        super().__init__(args)
        self._optimizer: torch.optim.Optimizer | None = None
        self.order: list[str] = []  # the parameters growth added, in the order they joined the optimizer

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"rank": 4}

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self._like = float_like(model)
        self.order = []
        return super().prepare(model, targets, ctx)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        slices = {t.role or "all": t.out_slice or (0, weight_shape(base)[0]) for t in targets}
        return TriAdaptProjection(base, slices, self.args.scale, self.args.init_rank, self._like)

    # ------------------------------------------------------------------ the optimizer, which grows
    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        """The strategy's groups, each listing first the parameters that existed at ``prepare`` (in the model's
        order), then those growth added, in the order they joined: the order a resumed run's optimizer must have."""
        joined = {n: i for i, n in enumerate(self.order)}
        groups = super().param_groups(model, strategy, lr, weight_decay)
        for g in groups:
            pairs = sorted(zip(g["names"], g["params"], strict=True),
                           key=lambda np_: (np_[0] in joined, joined.get(np_[0], 0)))
            g["names"], g["params"] = [n for n, _ in pairs], [p for _, p in pairs]
        return groups

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        self._optimizer = super().optimizer(groups, lr, weight_decay)
        return self._optimizer

    def _join(self, name: str, f: TriFactors, new: list[nn.Parameter]) -> None:
        """Put a new block's tensors into the optimizer group of the weight's first block (same role, same λ,
        same schedule and decay)."""
        names = [f"{name}.{what}.{len(getattr(f, what)) - 1}" for what in FACTORS]
        self.order += names
        if self._optimizer is None:
            return
        group = next(g for g in self._optimizer.param_groups if any(p is f.A[0] for p in g["params"]))
        group["params"].extend(new)
        if "names" in group:
            group["names"].extend(names)

    # ------------------------------------------------------------------ hooks
    def after_backward(self, model: nn.Module, step: int) -> None:
        """Add the orthogonality regulariser's gradient (as if it were part of the loss)."""
        w = float(self.args.orth_reg_weight)
        found = sites(model)
        if w and found:
            reg = sum(f.orthogonality() for _, f in found) / (2 * len(found))
            (w * reg).backward()

    def growth_count(self, step: int, total: int, target: int, candidates: int) -> int:
        """How many weights the threshold lets grow at ``step`` (at least one, at most ``candidates``)."""
        a = self.args
        steps = self.ctx.total_steps if self.ctx else 0
        c = (step - a.init_warmup) / (steps - a.init_warmup) if steps > a.init_warmup else 1.0
        c = min(max(c, 0.0), 1.0)
        remaining = target - total
        k = int(remaining * c) if a.growth == "linear" else int(math.exp(c * math.log(remaining)))
        return min(max(k, 1), candidates)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        """Grow the ranks of the weights whose importance rose most, while the budget is not reached."""
        a = self.args
        found = sites(model)
        total, target = sum(f.rank for _, f in found), a.rank * len(found)
        if not found or total >= target or step <= a.init_warmup or step % a.incre_interval:
            return
        scores = [f.score() for _, f in found]
        k = self.growth_count(step, total, target, len(found))
        threshold = sorted(scores, reverse=True)[k - 1]
        add = a.step_rank()
        for (name, f), s in zip(found, scores, strict=True):
            if s >= threshold and f.rank + add <= min(f.rows, f.d_in):
                self._join(name, f, f.grow(add, f.A[0]))

    def ranks(self, model: nn.Module) -> dict[str, list[int]]:
        """Every adapted weight's blocks (their sizes, in order): its rank is their sum."""
        return {n: f.blocks() for n, f in sites(model)}

    # ------------------------------------------------------------------ state, export
    def _rebuild(self, model: nn.Module, ranks: dict[str, list[int]]) -> None:
        """Grow each weight to the saved blocks (zeros: the saved values are loaded after)."""
        found = dict(sites(model))
        unknown = sorted(set(ranks) ^ set(found))
        if unknown:
            raise ConfigError(f"method 'triadaptlora': saved ranks do not match this model's adapted weights "
                              f"({', '.join(unknown[:3])}).")
        for name, blocks in ranks.items():
            f = found[name]
            have = f.blocks()
            if blocks[:len(have)] != have:
                raise ConfigError(f"method 'triadaptlora': saved blocks {blocks} of {name} do not extend its "
                                  f"blocks {have} (another init_rank?).")
            for k in blocks[len(have):]:
                f.grow(int(k), f.A[0], init=False)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {"ranks": self.ranks(model), "previous": {n: f.previous for n, f in sites(model)},
                "order": list(self.order)}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        self._rebuild(model, state["ranks"])
        for n, f in sites(model):
            f.previous = float(state["previous"][n])
        self.order = list(state["order"])

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        ranks = self.ranks(model)
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata={"method": self.name, "ranks": json.dumps(ranks)})
        return {"format": "efficientft-triadaptlora", "rank_total": sum(map(sum, ranks.values()))}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from safetensors import safe_open

        with safe_open(str(out_dir / TRAINABLE_FILE), "pt") as f:
            ranks = json.loads((f.metadata() or {}).get("ranks", "null"))
        if ranks is None:
            raise ConfigError(f"{out_dir}: not a TriAdaptLoRA export (no ranks in its metadata).")
        model = self.prepare(base, targets, ctx)
        self._rebuild(model, ranks)
        return load_trainable(model, out_dir)
