"""Training part of a fused projection (GPT-2 ``c_attn`` = [W_q | W_k | W_v]): full fine-tuning and LoRA.

PEFT and plain ``requires_grad`` work on whole tensors, so "train only W_q and W_v" cannot be said of a fused
weight directly; gradient masking is not enough either (AdamW's decoupled weight decay still moves the masked
rows). Here each chosen role's rows become parameters of their own, under ``slices.<role>``; the other rows are
frozen buffers of the original module and provably never change. PEFT's LoRA cannot target part of a fused
projection either; :class:`FusedLoRA` adds one low-rank adapter per chosen role, into that role's rows only.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (transformers.pytorch_utils): a linear layer that stores its weight as (in, out). The one
    place that recognises it, by type (a subclass counts; a class that is only named so does not)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def out_major_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the layout (GPT-2's Conv1D stores it transposed)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a projection, read from the module rather than its weight tensor: a
    bitsandbytes 4-bit layer stores its weight packed (e.g. (n·m/2, 1) bytes), not in the layer's shape."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    w = out_major_weight(module)
    return int(w.shape[0]), int(w.shape[1])


class SliceParams(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None


class SlicedProjection(nn.Module):
    """A fused projection whose chosen output slices (per role) train; every other row stays frozen."""

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        self.ranges = dict(sorted(slices.items(), key=lambda kv: kv[1]))
        w = out_major_weight(base)
        b = getattr(base, "bias", None)
        self.slices = nn.ModuleDict(
            {role: SliceParams(w[a:z], None if b is None else b[a:z]) for role, (a, z) in self.ranges.items()}
        )

    def full_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) in (out, in) layout with the trained slices in place of the original rows."""
        w = out_major_weight(self.base)
        b = getattr(self.base, "bias", None)
        w_parts, b_parts, at = [], [], 0
        for role, (a, z) in self.ranges.items():
            w_parts += [w[at:a], self.slices[role].weight]
            if b is not None:
                b_parts += [b[at:a], self.slices[role].bias]
            at = z
        w_parts.append(w[at:])
        if b is not None:
            b_parts.append(b[at:])
        return torch.cat(w_parts, 0), (torch.cat(b_parts, 0) if b is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.full_weight()
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The original module with the trained slices written back into its weight."""
        w, b = self.full_weight()
        if is_conv1d(self.base):
            self.base.weight.copy_(w.t())
        else:
            self.base.weight.copy_(w)
        if b is not None:
            self.base.bias.copy_(b)
        return self.base


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class LoRAFactors(nn.Module):
    """One role's low-rank update ``B A`` (A: r × d_in, B: rows × r), B = 0 at init (Hu et al. 2021, §4.1)."""

    def __init__(self, d_in: int, rows: int, rank: int, like: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in, dtype=like.dtype, device=like.device))
        self.B = nn.Parameter(torch.zeros(rows, rank, dtype=like.dtype, device=like.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and PEFT's default LoRA init)


class FusedLoRA(nn.Module):
    """LoRA on chosen row slices of a projection: one adapter (A_role, B_role) per role, added to its rows only.

    This is the original LoRA's ``MergedLinear`` with ``enable_lora=[True, False, True]`` (Hu et al. 2021, the
    GPT-2 experiments): on GPT-2's fused ``c_attn`` = [W_q | W_k | W_v], adapting "Q and V" adds
    ``scale · B_q A_q x`` to the Q rows and ``scale · B_v A_v x`` to the V rows, while the K rows are the base
    module's output, untouched. A slice covering every row is plain LoRA on a whole module. The factors live
    under ``lora.<role>`` so the λ strategy can find W_v's (``c_attn.lora.v.A``).
    """

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], rank: int, scale: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        self.ranges = dict(sorted(slices.items(), key=lambda kv: kv[1]))
        w = out_major_weight(base)
        self.scale = float(scale)
        self.lora = nn.ModuleDict(
            {role: LoRAFactors(w.shape[1], z - a, rank, w) for role, (a, z) in self.ranges.items()}
        )
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        parts, at = [], 0
        for role, (a, z) in self.ranges.items():
            f = self.lora[role]
            update = F.linear(F.linear(h, f.A.to(h.dtype)), f.B.to(h.dtype)) * self.scale
            parts += [y[..., at:a], y[..., a:z] + update.to(y.dtype)]
            at = z
        parts.append(y[..., at:])
        return torch.cat(parts, dim=-1)

    def delta(self, role: str) -> torch.Tensor:
        """``scale · B A`` of one role, in (rows, in) layout."""
        f = self.lora[role]
        return (f.B @ f.A) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base module with ``scale · B A`` added to each role's rows (every other row untouched)."""
        w = out_major_weight(self.base)  # a view: for Conv1D this writes through into the transposed weight
        for role, (a, z) in self.ranges.items():
            w[a:z] += self.delta(role).to(w.dtype)
        return self.base
