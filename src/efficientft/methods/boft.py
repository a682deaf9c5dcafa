"""BOFT (Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization", ICLR 2024,
arXiv 2311.06243).

    W = s ⊙ (W₀ R),   R = B_m ⋯ B₁,   B_k = P_kᵀ diag(R_{k,1}, …) P_k

OFT's dense orthogonal R is replaced by a product of m butterfly factors (``n_butterfly_factor``), each a
permuted block-diagonal matrix of orthogonal b×b blocks (Cayley transforms of skew-symmetric matrices): a product
of orthogonal matrices is orthogonal, and m factors connect every input to every other with O(m·d·b) parameters.
A trained scale s per output row (ones at init) changes row norms but not the angle between rows. PEFT's
``BOFTConfig`` (boft_block_size, boft_n_butterfly_factor, boft_dropout). nn.Linear only; b·2^(m−1) must divide
d_in. Defaults: the paper's GLUE setting (b = 8, m = 2).

Trainable count: each b×b block acts only through its skew-symmetric part Q = (R − Rᵀ)/2 (the Cayley transform
(I + Q)(I − Q)⁻¹ of OFT/BOFT, §3 of both papers), which has b(b−1)/2 free parameters; PEFT stores the whole b×b
block (b² numbers, 64 vs 28 at b = 8: 2.3× the paper's count). :meth:`BOFT.free_values` gives
m · (d_in / b) · b(b−1)/2 per module, plus the d_out row scales s and the head, as the paper counts BOFT's
parameters (and as PEFT's own OFT stores them); the optimizer still holds the full blocks.

PEFT 0.21.2 silently sets m = 1 (BOFT becomes OFT) whenever its CUDA block-diagonal kernel cannot be compiled, on
every CPU and on GPUs without ninja (and its own fallback computes only m = 1): :func:`_butterfly_kept` makes PEFT
build the m factors asked for, in ``prepare`` and ``reload``; where the kernel does not load, only the BOFT layers
of that model compute their block-diagonal step with torch's ``block_diag`` (:func:`_use_torch_block_diag`). PEFT's
module is left as it was: other models in the process, and PEFT's own BOFT, are unchanged.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly, check_divides
from .args import FRACTION, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class BoftArgs(MethodArgs):
    block_size: int = arg(8, POSITIVE_INT)
    n_butterfly_factor: int = arg(2, POSITIVE_INT)
    dropout: float = arg(0.0, FRACTION)

    def check(self) -> None:
        if self.n_butterfly_factor > 1 and self.block_size % 2:
            raise ValueError(f"block_size must be even when n_butterfly_factor > 1, got {self.block_size}.")


@register("boft")
class BOFT(LinearOnly, PeftMethod):
    summary = "BOFT (Liu et al. 2024): W0·R with R a product of butterfly orthogonal factors, via PEFT"
    Args = BoftArgs
    capabilities = Capabilities(quantized_base=True, merge=True, export="peft")
    peft_config_name = "BOFTConfig"

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)
        span = self.args.block_size * 2 ** (self.args.n_butterfly_factor - 1)
        check_divides(self.name, model, targets, span, "block_size·2^(n_butterfly_factor−1) =")

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        with _butterfly_kept():
            return _use_torch_block_diag(super().prepare(model, targets, ctx))

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        with _butterfly_kept():
            return _use_torch_block_diag(super().reload(base, out_dir, targets, ctx))

    def free_values(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """A b×b block R acts through (R − Rᵀ)/2 only: its b(b−1)/2 entries above the diagonal (PEFT stores b²)."""
        if ".boft_R." not in f".{name}.":
            return param
        b = param.shape[-1]
        i, j = torch.triu_indices(b, b, offset=1)
        return (param - param.transpose(-1, -2))[..., i, j] / 2

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"boft_block_size": self.args.block_size, "boft_n_butterfly_factor": self.args.n_butterfly_factor,
                "boft_dropout": self.args.dropout}

@contextmanager
def _butterfly_kept() -> Iterator[None]:
    """While PEFT builds BOFT layers, tell it its CUDA kernel exists (its only reason to drop to m = 1); PEFT's
    ``get_fbd_cuda`` is restored on leaving."""
    import peft.tuners.boft.layer as layer

    real = layer.get_fbd_cuda
    layer.get_fbd_cuda = lambda: True
    try:
        yield
    finally:
        layer.get_fbd_cuda = real


def _use_torch_block_diag(model: nn.Module) -> nn.Module:
    """Where PEFT's CUDA kernel does not load, give this model's BOFT layers a ``forward`` and
    ``get_delta_weight`` that compute the block-diagonal step with torch (:class:`TorchBlockDiag`): copies of
    PEFT's functions whose global ``FastBlockDiag`` is ours, bound to each layer, so PEFT's classes and module
    stay as they are."""
    import peft.tuners.boft.layer as layer
    import torch

    if torch.cuda.is_available() and layer.get_fbd_cuda() is not None:
        return model
    for m in model.modules():
        if isinstance(m, layer.BOFTLayer):
            for name in ("forward", "get_delta_weight"):
                setattr(m, name, types.MethodType(_with_torch_block_diag(getattr(type(m), name)), m))
    return model


_COPIES: dict[Any, Any] = {}


def _with_torch_block_diag(fn: Any) -> Any:
    """A copy of PEFT's function ``fn`` that reads ``FastBlockDiag`` as :class:`TorchBlockDiag` (made once)."""
    if fn not in _COPIES:
        scope = {**fn.__globals__, "FastBlockDiag": TorchBlockDiag}
        copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__, copy.__qualname__ = fn.__kwdefaults__, fn.__qualname__
        _COPIES[fn] = copy
    return _COPIES[fn]


class TorchBlockDiag:
    """``FastBlockDiag.apply`` in torch: (m, N, b, b) blocks -> (m, N·b, N·b), one block-diagonal matrix per factor."""

    @staticmethod
    def apply(blocks: Any) -> Any:
        import torch

        return torch.stack([torch.block_diag(*factor) for factor in blocks])
