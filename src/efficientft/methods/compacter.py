"""Compacter (Karimi Mahabadi, Henderson and Ruder 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
Layers", NeurIPS, arXiv 2106.04647), as Compacter++: one adapter per layer, after the feed-forward block.

The adapter is a bottleneck (``h ← h + W_up f(W_down h)``) whose two weights are parameterised hypercomplex
multiplication (PHM) layers, sums of Kronecker products: ``W = Σ_{i=1}^{n} A_i ⊗ B_i`` with A_i ∈ R^{n×n} and
B_i ∈ R^{(k/n)×(d/n)} for a k × d weight (§3, "Parameterized hypercomplex multiplication layers"). Compacter
makes B_i low rank, ``W = Σ_i A_i ⊗ (s_i t_iᵀ)`` with s_i ∈ R^{(k/n)×r}, t_i ∈ R^{r×(d/n)} (§3, "low-rank
parameterized hypercomplex multiplication"; the paper uses r = 1), and shares the "slow" weights A_i across all
adapter layers (one A for every PHM layer of the model). Trainable: n³ (the shared A) +
L · [2r(d + m) + m + d] + every norm of the model + head, for L layers, hidden size d and bottleneck m (a multiple
of n: d // reduction factor, rounded up).

Defaults follow the authors' Compacter++ configuration (rabeehk/compacter ``seq2seq/configs/compacter++.json``):
reduction factor 32 (``task_reduction_factor``), n = 4 (``hypercomplex_division``), ``gelu_new`` (GELU's tanh
approximation), every layer norm of the model trains (``unfreeze_layer_norms``: all of T5's, the final ones too;
``layer_norm`` here), and the initialisation of their PHM layers: A normal with std 10⁻⁴ (``phm_c_init`` normal,
``phm_init_range`` 1e-4), the s_i and t_i Glorot-uniform (``hypercomplex_nonlinearity``), zero biases, W_up not
zeroed, so the model starts next to the base model (W ≈ 10⁻⁴ in scale), not exactly at it. Placement follows their
code too, not AdapterHub's Pfeiffer placement: their T5 FFN sub-layer applies the adapter to the FFN's output
before the dropout and residual (``y = adapter(DenseReluDense(LN(x))); x + dropout(y)``), which is Houlsby's FFN
position, so Compacter++ here is a series adapter on the FFN's last projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.roles import Target
from ..strategy import is_norm
from . import register
from ._adapters import NONLINEARITY, AdapterMethod, Bottleneck, BottleneckArgs
from .args import BOOL, POSITIVE_INT, arg
from .base import Context
from .capabilities import Capabilities


@dataclass
class CompacterArgs(BottleneckArgs):
    nonlinearity: str = arg("gelu_new", NONLINEARITY)  # the authors' non_linearity
    reduction_factor: int = arg(32, POSITIVE_INT)  # d / m (the authors' Compacter++ configuration: task_reduction_factor 32)
    phm_dim: int = arg(4, POSITIVE_INT)  # n: Kronecker products per weight (the paper's default)
    phm_rank: int = arg(1, POSITIVE_INT)  # r: the rank of each B_i = s_i t_iᵀ (the paper uses 1)
    layer_norm: bool = arg(True, BOOL)  # train every norm of the model (the authors' unfreeze_layer_norms)


PHM_INIT_RANGE = 1e-4  # the std of A (the authors' phm_init_range)


class SharedRule(nn.Module):
    """The slow weights A_1..A_n (n × n each), one module shared by every PHM layer of the model."""

    def __init__(self, n: int, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(n, n, n, dtype=like.dtype, device=like.device))
        nn.init.normal_(self.A, std=PHM_INIT_RANGE)


class PHMLinear(nn.Module):
    """y = W x + b with W (out × in) = Σ_i A_i ⊗ (s_i t_iᵀ).

    The shared A is registered in the first PHM layer only (``owner``); the others keep a plain reference, so the
    model's state dict, its export and its checkpoints hold A once, not once per layer.
    """

    def __init__(self, d_in: int, d_out: int, rule: SharedRule, rank: int, owner: bool) -> None:
        super().__init__()
        a = rule.A
        n = a.shape[0]
        if owner:
            self.shared_rule = rule
        object.__setattr__(self, "_rule", rule)  # not a submodule: no second name for the same tensor
        self.s = nn.Parameter(torch.empty(n, d_out // n, rank, dtype=a.dtype, device=a.device))
        self.t = nn.Parameter(torch.empty(n, rank, d_in // n, dtype=a.dtype, device=a.device))
        self.bias = nn.Parameter(torch.zeros(d_out, dtype=a.dtype, device=a.device))
        for p in (self.s, self.t):
            bound = math.sqrt(6.0 / (p.shape[1] + p.shape[2]))  # Glorot-uniform, per B_i factor
            nn.init.uniform_(p, -bound, bound)

    @property
    def rule(self) -> SharedRule:
        return self._rule

    def weight(self) -> torch.Tensor:
        """Σ_i A_i ⊗ B_i: entry (p·k' + q, u·d' + v) = Σ_i A_i[p, u] · B_i[q, v]."""
        a, b = self.rule.A, self.s @ self.t  # b: (n, k/n, d/n)
        n, kq, dv = b.shape
        return (a[:, :, None, :, None] * b[:, None, :, None, :]).sum(0).reshape(n * kq, n * dv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


@register("compacter")
class Compacter(AdapterMethod):
    summary = "Compacter++ (Karimi Mahabadi et al. 2021): FFN adapter of Kronecker sums, A shared across layers"
    revision = 2  # Compacter++'s configuration: gelu_new, A ~ N(0, 1e-4²), W_up drawn, norms trained
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = CompacterArgs

    def positions(self) -> tuple[str, ...]:
        return ("ffn",)

    def bottleneck_size(self, d: int) -> int:
        n = self.args.phm_dim
        if d % n:
            raise ConfigError(f"method 'compacter': phm_dim {n} must divide the hidden size {d}.")
        if self.args.bottleneck:
            if self.args.bottleneck % n:
                raise ConfigError(f"method 'compacter': bottleneck {self.args.bottleneck} must be a multiple of "
                                  f"phm_dim {n}.")
            return self.args.bottleneck
        return max(n, math.ceil(d // self.args.reduction_factor / n) * n)

    def extra_trainable(self, model: nn.Module) -> list[str]:
        if not self.args.layer_norm:
            return []
        return [f"{n}.{pn}" for n, m in model.named_modules() if is_norm(m)
                for pn, _ in m.named_parameters(recurse=False)]

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self._rule: SharedRule | None = None  # one new A per prepared model, shared by all its PHM layers
        return super().prepare(model, targets, ctx)

    def build(self, d: int, like: torch.Tensor) -> nn.Module:
        owner = self._rule is None
        if owner:
            self._rule = SharedRule(self.args.phm_dim, like)
        rule = self._rule
        m = self.bottleneck_size(d)
        down = PHMLinear(d, m, rule, self.args.phm_rank, owner=owner)
        up = PHMLinear(m, d, rule, self.args.phm_rank, owner=False)
        return Bottleneck(down, up, self.args.nonlinearity)
