"""Shared parts of the methods that re-parameterise a targeted weight from its own decomposition (LoLDU, SVFit)
or train part of it in place (PaCA), and of SoRA and KaSA: rank checks, a frozen-factor diagonal
adapter, and an export that carries the buffers a reload cannot recompute (PaCA's random columns). The injection
skeleton they share is :class:`~efficientft.methods._inject.WrapsTargets`.

They need the dense base weight (an LU or SVD of it, or its columns), so none runs on a quantized base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.fused import out_major_weight
from ..models.roles import Target
from ._inject import WrapsTargets
from .base import TRAINABLE_FILE

DENSE_BASE = "it decomposes or edits the dense base weight W, which a 4/8-bit layer does not hold"


def check_rank(rank: int, name: str, shape: tuple[int, int], limit: int | None = None) -> None:
    """A rank must fit the weight: at most min(out, in) (or ``limit``)."""
    most = min(shape) if limit is None else limit
    if rank > most:
        raise ConfigError(f"rank {rank} is larger than {name} allows ({tuple(shape)}: at most {most}).")


def frozen(base: nn.Module) -> nn.Module:
    """``base`` with every parameter frozen: the wrapped layer of a re-parameterising module."""
    for p in base.parameters():
        p.requires_grad = False
    return base


@torch.no_grad()
def set_out_major(module: nn.Module, w: torch.Tensor) -> None:
    """Write ``w`` (out, in) into the module's weight, in its own layout (Conv1D stores it transposed)."""
    out_major_weight(module).copy_(w.to(module.weight.dtype))


class DiagAdapter(nn.Module):
    """W = W_res + σ · Left diag(d) Right, with Left (out × r), Right (r × in) frozen and d (and σ) trainable.

    The base module keeps the residual weight W_res; the forward adds the rank-r term through the thin factors
    (x Rightᵀ ⊙ σd) Leftᵀ, never forming an (out × in) matrix. d and σ train as offsets from their initial
    values (d = d₀ + ``diag``, σ = 1 + ``scale``; both offsets start at 0): the same function and the same r (+1)
    parameters, but weight decay then pulls them back to the pretrained decomposition, as it pulls LoRA's update
    to zero, instead of shrinking the weight's principal components to nothing.
    """

    def __init__(self, base: nn.Module, residual: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                 diag: torch.Tensor, scale: bool = False) -> None:
        super().__init__()
        self.base = frozen(base)
        set_out_major(base, residual)
        self.register_buffer("left", left.detach().contiguous())
        self.register_buffer("right", right.detach().contiguous())
        self.register_buffer("diag0", diag.detach().clone())
        self.diag = nn.Parameter(torch.zeros_like(self.diag0))
        self.scale = nn.Parameter(torch.zeros(1, dtype=diag.dtype, device=diag.device)) if scale else None

    def values(self) -> torch.Tensor:
        """σ · d, the r values on the diagonal."""
        d = self.diag0 + self.diag
        return d if self.scale is None else d * (1 + self.scale)

    def delta(self) -> torch.Tensor:
        """The rank-r term σ · Left diag(d) Right, (out, in)."""
        return (self.left * self.values()) @ self.right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.right.to(x.dtype)) * self.values().to(x.dtype)
        return self.base(x) + F.linear(h, self.left.to(x.dtype))

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base)
        set_out_major(self.base, w + self.delta().to(w.dtype))
        return self.base


class Decomposed(WrapsTargets):
    """A method that re-parameterises each targeted weight as W_res + σ · Left diag(d) Right (:meth:`factors`)."""

    scaled: bool = False  # does a trainable scalar σ multiply the diagonal (LoLDU)?
    wrapper = DiagAdapter  # no fused slices; the rank fits every weight (check_targets)

    def factors(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Left, d, Right) of the rank-r term of ``w`` (float64, (out, in))."""
        raise NotImplementedError

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        w = out_major_weight(base).detach()
        left, d, right = self.factors(w.double())
        residual = w.double() - (left * d) @ right
        dt = w.dtype
        return DiagAdapter(base, residual.to(dt), left.to(dt), right.to(dt), d.to(dt), self.scaled)


def write_with_buffers(model: nn.Module, out_dir: Path, method: str, kind: type,
                       meta: dict[str, str] | None = None) -> dict[str, Any]:
    """Our safetensors: the trained tensors and the buffers of every ``kind`` module (what a reload cannot redo)."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    for name, m in model.named_modules():
        if isinstance(m, kind):
            for b, t in m.named_buffers(recurse=False):
                tensors[f"{name}.{b}"] = t.contiguous().cpu()
    save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata={"method": method, **(meta or {})})
    return {"format": f"efficientft-{method}"}


def load_with_buffers(model: nn.Module, out_dir: Path, method: str) -> nn.Module:
    """Load :func:`write_with_buffers`' file into a model prepared the same way; a mismatch is one clear error."""
    from safetensors.torch import load_file

    tensors = load_file(str(out_dir / TRAINABLE_FILE))
    state = model.state_dict()
    wanted = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(wanted - set(tensors))
    extra = sorted(set(tensors) - set(state))
    bad = [n for n in tensors if n in state and tensors[n].shape != state[n].shape]
    if missing or extra or bad:
        raise ConfigError(f"{out_dir}: this {method} export does not fit the model (missing {missing[:3]}, "
                          f"unexpected {extra[:3]}, other shapes {bad[:3]}); reload it with the targets and "
                          "method arguments it was trained with.")
    model.load_state_dict(tensors, strict=False)
    return model
