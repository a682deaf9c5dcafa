"""Light-PEFT: Lightening Parameter-Efficient Fine-Tuning via Early Pruning (Gu et al., Findings of ACL 2024,
arXiv 2406.03792; reference code github.com/gccnlp/Light-PEFT: ``NLU/trainer_base.py`` (``MaskTrainer``: the L1
term, the mask learning rates, the rank importance), ``peft/src/peft/tuners/lora.py`` (the module importance),
``NLU/nlu_utils.py`` (the pruning rules) and ``scripts/estimate.sh``, ``scripts/train.sh`` (the defaults)).

Both of its methods estimate redundancy in the *early stage* of training, then prune it away, and training goes on
with the pruned model and the pruned LoRA:

1. **Masked early pruning of the foundation model.** A trainable scalar mask, initialised to 1, multiplies every
   attention head's output (the input of W_o, head by head) and every FFN intermediate neuron (the input of the FFN
   down projection). The estimation loss is the task loss + ``l1`` · (Σ|m_attn| + Σ|m_ffn|) (reference
   ``l1_loss_coef`` 1e-4); the masks learn at 100× (heads) and 50× (neurons) the estimation rate. After estimation,
   as ``prune_bert_attn`` / ``prune_bert_ffn``: a head is pruned when its mask is at or below the ``attn_ratio``
   quantile of its layer's masks (layerwise), a neuron when its mask is at or below the ``ffn_ratio`` quantile of
   all layers' masks (global, the reference script's ``ffn_pruning_method``). Pruning is structural: a head's rows
   of W_q, W_k, W_v (and of their LoRA B) and its columns of W_o (and of its LoRA A) are removed; a neuron's row of
   the up (and gate) projection and its column of the down projection.
2. **Multi-granularity early pruning of PEFT** (LoRA, the reference's ``adapter_name``). *Module level*: a LoRA
   module's importance is the mean, over the non-padding tokens and the second half of the estimation steps, of
   ‖ΔW x‖₂ / ‖W x + b‖₂ (the reference's ``p2``); modules at or below the ``module_ratio`` quantile lose their LoRA.
   *Rank level*: rank i of a module scores |mean_j (A ⊙ ∇A)_ij| + |mean_j (B ⊙ ∇B)_ji| (first-order Taylor,
   ``first_order``), averaged over the second half of the steps; ranks at or below the ``rank_ratio`` quantile over
   every remaining module are pruned (global), and a module left without a rank loses its LoRA.

"At or below the ratio quantile" is the reference's rule (``np.quantile``, linear interpolation, ``score >
threshold`` kept), so n distinct scores lose ⌊(n − 1)·ratio⌋ + 1; a ratio of 0 prunes nothing (the reference skips
it; one deviation: where tied head masks would prune a whole layer's heads, its best head stays, since attention
cannot run without one). Defaults are ``scripts/train.sh``'s: attn 1/3, ffn 1/3, module 0.75, rank 0.5, LoRA r 8, α
16, dropout 0.05, estimation lr 3e-4 (``estimate.sh``). The reference estimates for 800 steps (``estimate.sh``'s
``max_steps``), of a second training of 10 epochs; ``estimate_steps`` 0 takes 800, or the run's steps where it has
fewer.

In this loop the estimation runs inside :meth:`init_from_data`, before the optimizer exists, with its own AdamW at
``estimate_lr`` (linear decay, no weight decay: the reference trainer's defaults) on the LoRA factors, the masks and
the task head; as the reference's second run loads the estimation's adapter file (the task head with it), the
surviving LoRA factors and the head are kept, and the run trains them at its own rate. λ then applies to W_v's
remaining A and B (where the pruning removed every W_v module, λ ≠ 1 is refused in one line naming it). The
reference adapts query, key, value, both output projections and the intermediate projection (``--targets
all-linear`` here); the run's targets decide. The estimation's cost (its steps, tokens, seconds) is method state
too, recorded beside the run's training (``estimate_*`` cost figures: compute other methods do not get). The
structure is method state (checkpoints) and export metadata;
reload prunes a fresh base the same way. Merge folds s·BA into the pruned weights: the merged model is the pruned
one (a plain model whose attention modules hold fewer heads than its config says, so it is used in memory or
re-exported through this method, not by ``from_pretrained``).

Head pruning needs one key/value head per query head and separate Q, K, V projections (BERT, LLaMA without
grouped-query attention); elsewhere (GQA, GPT-2's fused ``c_attn``) ``attn_ratio`` must be 0, refused in one line.
"""

from __future__ import annotations

import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.fused import is_conv1d, out_major_weight, replace_module, weight_shape
from ..models.large import is_quantized
from ..models.roles import Target, family_of, linear_modules, role_of
from ..strategy import Strategy
from . import register
from ._adapters import float_like, layer_of
from ._decomp import frozen, set_out_major
from ._inject import WrapsTargets
from .args import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import TRAINABLE_FILE, Context, load_trainable
from .capabilities import Capabilities

REFERENCE_STEPS = 800  # scripts/estimate.sh: max_steps
ATTN_MASK_LR, FFN_MASK_LR = 100.0, 50.0  # MaskTrainer's attn_mask_lr_coef, ffn_mask_lr_coef


@dataclass
class LightPeftArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)
    alpha: float = arg(16.0, POSITIVE)  # scale α/r (the reference: r 8, α 16)
    dropout: float = arg(0.05, FRACTION)
    attn_ratio: float = arg(1 / 3, FRACTION)  # heads pruned per layer (quantile rule); 0: none
    ffn_ratio: float = arg(1 / 3, FRACTION)  # FFN neurons pruned over all layers; 0: none
    module_ratio: float = arg(0.75, FRACTION)  # LoRA modules removed; 0: none
    rank_ratio: float = arg(0.5, FRACTION)  # LoRA ranks pruned over the remaining modules; 0: none
    estimate_steps: int = arg(0, NON_NEGATIVE_INT, note="0: 800, or the run's steps if fewer")
    estimate_lr: float = arg(3e-4, POSITIVE)  # the estimation's rate (masks: 100x, 50x)
    l1: float = arg(1e-4, NON_NEGATIVE)  # weight of the masks' L1 term


def pruned_by_quantile(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The reference's rule: True where a score is at or below the ``ratio`` quantile of ``scores`` (linear
    interpolation, as ``np.quantile``); nothing where ``ratio`` is 0."""
    if ratio == 0 or scores.numel() == 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    s = scores.detach().double().cpu()
    return s <= float(np.quantile(s.numpy(), ratio))


def _linear_like(module: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
    """A frozen projection of the same kind as ``module`` (nn.Linear or GPT-2's Conv1D) with out-major weight ``w``."""
    if is_conv1d(module):
        from transformers.pytorch_utils import Conv1D

        new = Conv1D(w.shape[0], w.shape[1])
        new.weight = nn.Parameter(w.t().contiguous().clone())
        new.bias = nn.Parameter(b.clone() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                              device=w.device))
    else:
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
        new.weight = nn.Parameter(w.contiguous().clone())
        if b is not None:
            new.bias = nn.Parameter(b.clone())
    return frozen(new)


@torch.no_grad()
def slice_projection(module: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
                     ) -> nn.Module:
    """``module`` keeping only output ``rows`` and input ``cols`` (index tensors; None keeps all)."""
    w = out_major_weight(module)
    b = getattr(module, "bias", None)
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
        b = b.index_select(0, rows.to(b.device)) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    return _linear_like(module, w, b)


class LightLoRA(nn.Module):
    """base(x) + (α/r) B A dropout(x), A Kaiming-initialised, B zeros; while ``recording``, each training forward
    keeps ‖ΔW x‖₂ / ‖base(x)‖₂ per token (the module importance)."""

    def __init__(self, base: nn.Module, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base = frozen(base)
        out_f, in_f = weight_shape(base)
        like = out_major_weight(base)
        self.scaling = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=like.dtype, device=like.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=like.dtype, device=like.device))
        self.recording = False
        self.last_ratio: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        delta = F.linear(F.linear(self.dropout(x), self.A.to(x.dtype)), self.B.to(x.dtype)) * self.scaling
        if self.recording and self.training:
            with torch.no_grad():
                self.last_ratio = (delta.float().norm(dim=-1) / h.float().norm(dim=-1)).detach()
        return h + delta

    @torch.no_grad()
    def rank_importance(self) -> torch.Tensor:
        """First-order score of each rank i: |mean_j (A ⊙ ∇A)_ij| + |mean_j (B ⊙ ∇B)_ji| (nan, inf: 0)."""
        ia = (self.A * self.A.grad).mean(1).abs() if self.A.grad is not None else torch.zeros_like(self.A[:, 0])
        ib = (self.B * self.B.grad).mean(0).abs() if self.B.grad is not None else torch.zeros_like(self.B[0])
        return torch.nan_to_num(ia + ib, nan=0.0, posinf=0.0, neginf=0.0).float().cpu()

    @torch.no_grad()
    def keep(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
             ranks: torch.Tensor | None = None) -> None:
        """Prune the base's output ``rows`` / input ``cols`` (and the matching rows of B / columns of A), and the
        LoRA ``ranks``."""
        self.base = slice_projection(self.base, rows, cols)
        a, b = self.A.data, self.B.data
        if rows is not None:
            b = b.index_select(0, rows.to(b.device))
        if cols is not None:
            a = a.index_select(1, cols.to(a.device))
        if ranks is not None:
            a, b = a.index_select(0, ranks.to(a.device)), b.index_select(1, ranks.to(b.device))
        self.A, self.B = nn.Parameter(a.contiguous()), nn.Parameter(b.contiguous())

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base)
        set_out_major(self.base, w + self.scaling * (self.B @ self.A).to(w.dtype))
        return self.base


class InputMask(nn.Module):
    """A projection whose input groups (heads of ``width`` features, or neurons: width 1) are scaled by a trainable
    mask, 1 at init: the estimation stage's masks."""

    def __init__(self, base: nn.Module, groups: int, width: int, like: torch.Tensor) -> None:
        super().__init__()
        self.base, self.width = base, width
        self.mask = nn.Parameter(torch.ones(groups, dtype=like.dtype, device=like.device))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.base(x * self.mask.to(x.dtype).repeat_interleave(self.width), *args, **kwargs)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a projection, through the wrappers around it (masks, LoRA)."""
    while isinstance(module, (InputMask, LightLoRA)):
        module = module.base
    return weight_shape(module)


def _strip(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, InputMask) else module


@register("light_peft")
class LightPeft(WrapsTargets):
    summary = ("Light-PEFT (Gu et al. 2024): masks estimate redundant heads/FFN neurons, LoRA module and rank "
               "importance early; then base and LoRA are pruned structurally and training goes on")
    Args = LightPeftArgs
    lr_prior = (1e-4, 3e-3)  # LoRA's (the reference trains at 3e-4)
    capabilities = Capabilities(rank=True, merge=True, export="efficientft",
                                quantized_base_reason="it prunes the base's weights structurally (removing rows and "
                                "columns), which packed 4/8-bit weights do not allow here")

    wrapper = LightLoRA
    estimate: dict[str, float] | None = None  # the estimation's steps, tokens, token pairs and seconds

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        # Tiny models: 2 estimation steps; no module pruning (with 4 LoRA modules it would leave one, perhaps not
        # W_v's, and the matrix's λ check needs W_v); the tiny LLaMA groups its query heads (GQA): no head pruning.
        return {"rank": 4, "estimate_steps": 2, "module_ratio": 0.0, "attn_ratio": 0.0 if arch == "llama" else 0.25}

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        return LightLoRA(base, self.args.rank, self.args.alpha / self.args.rank, self.args.dropout)

    # ------------------------------------------------------------------ the model's structures
    def _layout(self, model: nn.Module) -> dict[str, dict[str, str]]:
        """Per transformer layer, its projections by role (q, k, v, o, ffn_up, ffn_gate, ffn_down)."""
        family = family_of(model)
        out: dict[str, dict[str, str]] = {}
        for name in linear_modules(model):
            role, layer = role_of(family, name), layer_of(name)
            if role and layer:
                out.setdefault(layer, {})[role] = name
        return {k: v for k, v in out.items() if "o" in v and "ffn_down" in v}

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.check_targets(model, targets)
        layout = self._layout(model)
        if not layout:
            raise ConfigError("method 'light_peft' prunes attention heads and FFN neurons found through the role map "
                              "(roles o and ffn_down), and this model has none.")
        heads = int(getattr(model.config, "num_attention_heads", 0) or 0)
        if self.args.attn_ratio:
            for roles in layout.values():
                shapes = {r: _shape(_get(model, roles[r]))[0] for r in ("q", "k", "v") if r in roles}
                if len(shapes) < 3 or len(set(shapes.values())) != 1 or not heads:
                    raise ConfigError("method 'light_peft' cannot prune attention heads of this model: it needs "
                                      "separate Q, K, V projections with one key/value head per query head (not "
                                      "grouped-query attention, not GPT-2's fused c_attn); pass attn_ratio=0.")
        self.layout, self.num_heads = layout, heads
        return super().prepare(model, targets, ctx)

    def _modules(self, model: nn.Module) -> dict[str, LightLoRA]:
        return {n: m for n, m in model.named_modules() if isinstance(m, LightLoRA)}

    # ------------------------------------------------------------------ stage 1: estimation
    def init_from_data(self, model: nn.Module, batches: typing.Iterable[dict]) -> None:
        t0 = time.perf_counter()
        like = float_like(model)
        loras = self._modules(model)  # named before the masks wrap W_o and the down projection
        for roles in self.layout.values():
            o, down = _get(model, roles["o"]), _get(model, roles["ffn_down"])
            width = _shape(o)[1] // self.num_heads if self.num_heads else 1
            replace_module(model, roles["o"], InputMask(o, max(1, self.num_heads), width, like))
            replace_module(model, roles["ffn_down"], InputMask(down, _shape(down)[1], 1, like))
        attn = [_get(model, r["o"]).mask for r in self.layout.values()]
        ffn = [_get(model, r["ffn_down"]).mask for r in self.layout.values()]
        own = [p for p in model.parameters() if p.requires_grad and all(p is not m for m in attn + ffn)]
        lr = self.args.estimate_lr
        steps = self.args.estimate_steps or min(REFERENCE_STEPS, max(1, self.ctx.total_steps if self.ctx else 1))
        opt = torch.optim.AdamW([{"params": own, "lr": lr}, {"params": attn, "lr": lr * ATTN_MASK_LR},
                                 {"params": ffn, "lr": lr * FFN_MASK_LR}], lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
        module_imp = {n: 0.0 for n in loras}
        rank_imp = {n: torch.zeros(m.A.shape[0]) for n, m in loras.items()}
        recorded, trained_tokens, trained_pairs = 0, 0, 0
        was_training = model.training
        model.train()
        it = iter(batches)
        try:
            for step in range(steps):
                record = step >= steps // 2  # the reference averages the second half of the records
                for m in loras.values():
                    m.recording = record
                batch = next(it)
                if "attention_mask" in batch:
                    trained_tokens += int(batch["attention_mask"].sum())
                    trained_pairs += int((batch["attention_mask"].sum(1) ** 2).sum())
                loss = model(**batch).loss + self.args.l1 * sum(m.abs().sum() for m in attn + ffn)
                loss.backward()
                if record:
                    recorded += 1
                    tokens = batch.get("attention_mask")
                    for n, m in loras.items():
                        r = m.last_ratio
                        r = r[tokens.bool()] if tokens is not None and tokens.shape == r.shape else r
                        module_imp[n] += float(torch.nan_to_num(r.mean(), nan=0.0, posinf=0.0, neginf=0.0))
                        rank_imp[n] += m.rank_importance()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        finally:
            model.train(was_training)
            for m in loras.values():
                m.recording, m.last_ratio = False, None
        recorded = max(1, recorded)
        self.scores = {
            "heads": {layer: _get(model, r["o"]).mask.detach().float().cpu() for layer, r in self.layout.items()},
            "neurons": {layer: _get(model, r["ffn_down"]).mask.detach().float().cpu()
                        for layer, r in self.layout.items()},
            "modules": {n: v / recorded for n, v in module_imp.items()},
            "ranks": {n: v / recorded for n, v in rank_imp.items()},
        }
        for roles in self.layout.values():  # the masks are dropped: pruning replaces them
            for r in ("o", "ffn_down"):
                replace_module(model, roles[r], _strip(_get(model, roles[r])))
        self.structure = self.choose(self.scores)
        self.apply(model, self.structure)
        self.estimate = {"steps": steps, "tokens": trained_tokens, "token_pairs": trained_pairs,
                         "s": time.perf_counter() - t0}

    def estimate_cost(self) -> dict[str, float] | None:
        """The estimation's steps are training on the run's data that other methods do not get: its cost."""
        return self.estimate

    def choose(self, scores: dict[str, Any]) -> dict[str, Any]:
        """What survives, from the estimation's scores (the reference's rules; see the module docstring)."""
        a = self.args
        heads = {layer: torch.nonzero(~pruned_by_quantile(s, a.attn_ratio)).flatten().tolist() or [int(s.argmax())]
                 for layer, s in scores["heads"].items()}  # ties could prune all: the best head stays (no attention
                                                           # runs without one)
        layers = list(scores["neurons"])
        flat = pruned_by_quantile(torch.cat([scores["neurons"][k] for k in layers]), a.ffn_ratio) if layers else None
        neurons, at = {}, 0
        for k in layers:
            n = scores["neurons"][k].numel()
            neurons[k] = torch.nonzero(~flat[at:at + n]).flatten().tolist()
            at += n
        names = list(scores["modules"])
        gone = pruned_by_quantile(torch.tensor([scores["modules"][n] for n in names]), a.module_ratio)
        kept = [n for n, g in zip(names, gone.tolist(), strict=True) if not g]
        ranks = {n: [] for n in names}
        if kept:
            cut = pruned_by_quantile(torch.cat([scores["ranks"][n] for n in kept]), a.rank_ratio)
            at = 0
            for n in kept:
                r = scores["ranks"][n].numel()
                ranks[n] = torch.nonzero(~cut[at:at + r]).flatten().tolist()
                at += r
        return {"heads": heads, "neurons": neurons, "ranks": ranks}

    @torch.no_grad()
    def apply(self, model: nn.Module, structure: dict[str, Any]) -> None:
        """Prune ``model`` (prepared, masks gone) to ``structure``: heads, neurons, then LoRA modules and ranks."""
        def cut(name: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
            m = _get(model, name)
            if isinstance(m, LightLoRA):
                m.keep(rows=rows, cols=cols)
            else:
                replace_module(model, name, slice_projection(m, rows, cols))

        for layer, roles in self.layout.items():
            kept = structure["heads"].get(layer)
            if kept is not None and self.num_heads and len(kept) < self.num_heads:
                width = _shape(_get(model, roles["o"]))[1] // self.num_heads
                idx = torch.tensor([h * width + j for h in kept for j in range(width)], dtype=torch.long)
                for r in ("q", "k", "v"):
                    cut(roles[r], rows=idx)
                cut(roles["o"], cols=idx)
            kept = structure["neurons"].get(layer)
            if kept is not None and len(kept) < _shape(_get(model, roles["ffn_down"]))[1]:
                idx = torch.tensor(kept, dtype=torch.long)
                for r in ("ffn_up", "ffn_gate"):
                    if r in roles:
                        cut(roles[r], rows=idx)
                cut(roles["ffn_down"], cols=idx)
        for name, m in self._modules(model).items():
            ranks = structure["ranks"].get(name)
            if ranks is None:
                continue
            if not ranks:  # a pruned module (or one left without a rank) loses its LoRA
                replace_module(model, name, m.base)
            elif len(ranks) < m.A.shape[0]:
                m.keep(ranks=torch.tensor(ranks, dtype=torch.long))

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        """The strategy's groups; a ratio for a role whose every LoRA module the early pruning removed is refused
        here, naming the pruning (the loop's generic line would advise adding the role to --targets)."""
        groups = super().param_groups(model, strategy, lr, weight_decay)
        carried = {role for g in groups for role in g["roles"]}
        for role in sorted({t.role for t in self.targets if t.role} - carried):
            if strategy.multiplier(role) != 1.0:
                raise ConfigError(f"method 'light_peft': a learning-rate ratio of {strategy.multiplier(role):g} for "
                                  f"role {role!r} cannot apply: the early pruning removed every LoRA module of that "
                                  f"role (module_ratio {self.args.module_ratio:g}, rank_ratio "
                                  f"{self.args.rank_ratio:g}); lower module_ratio, or drop the ratio.")
        return groups

    def kept_ranks(self, model: nn.Module) -> dict[str, int]:
        return {n: int(m.A.shape[0]) for n, m in self._modules(model).items()}

    # ------------------------------------------------------------------ state, merge, export
    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {"structure": json.dumps(self.structure), "estimate": json.dumps(self.estimate)}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.structure = json.loads(state["structure"])
        self.estimate = json.loads(state.get("estimate", "null"))
        self.apply(model, self.structure)

    def merge(self, model: nn.Module) -> nn.Module:
        if is_quantized(model):
            raise ConfigError("method 'light_peft' cannot merge into a quantized base; export instead.")
        return super().merge(model)

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(out_dir / TRAINABLE_FILE),
                  metadata={"method": self.name, "structure": json.dumps(self.structure)})
        ranks = self.kept_ranks(model)
        return {"format": "efficientft-light-peft", "lora_modules": len(ranks), "rank_total": sum(ranks.values())}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from safetensors import safe_open

        with safe_open(str(out_dir / TRAINABLE_FILE), "pt") as f:
            structure = (f.metadata() or {}).get("structure")
        if structure is None:
            raise ConfigError(f"{out_dir}: not a Light-PEFT export (no pruned structure in its metadata).")
        model = self.prepare(base, targets, ctx)
        self.load_state_dict(model, {"structure": structure})
        return load_trainable(model, out_dir)

