"""BOFT (Liu et al. 2024, "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization", ICLR 2024,
arXiv 2311.06243).

    W = s ⊙ (W₀ R),   R = B_m ⋯ B₁,   B_k = P_kᵀ diag(R_{k,1}, …) P_k

OFT's dense orthogonal R is replaced by a product of m butterfly factors (``n_butterfly_factor``), each a
permuted block-diagonal matrix of orthogonal b×b blocks (Cayley transforms of skew-symmetric matrices): a product
of orthogonal matrices is orthogonal, and m factors connect every input to every other with O(m·d·b) parameters.
A trained scale s per output row (ones at init) changes row norms but not the angle between rows. PEFT's
``BOFTConfig`` (boft_block_size, boft_n_butterfly_factor, boft_dropout). nn.Linear only; b·2^(m−1) must divide
d_in. Defaults: the paper's GLUE setting (b = 8, m = 2).

PEFT 0.21.2 silently sets m = 1 (BOFT becomes OFT) whenever its CUDA block-diagonal kernel cannot be compiled, on
every CPU and on GPUs without ninja (and its own fallback computes only m = 1): :func:`_butterfly_kept` makes PEFT
build the m factors asked for, with torch's ``block_diag`` in place of the kernel, in ``prepare`` and ``reload``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..models.roles import Target
from . import register
from ._shapes import LinearOnly, check_divides
from .base import Context, positive_int
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class BoftArgs:
    block_size: int = 8
    n_butterfly_factor: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        positive_int("block_size", self.block_size)
        positive_int("n_butterfly_factor", self.n_butterfly_factor)
        if self.n_butterfly_factor > 1 and self.block_size % 2:
            raise ValueError(f"block_size must be even when n_butterfly_factor > 1, got {self.block_size}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")


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
            return super().prepare(model, targets, ctx)

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        with _butterfly_kept():
            return super().reload(base, out_dir, targets, ctx)

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"boft_block_size": self.args.block_size, "boft_n_butterfly_factor": self.args.n_butterfly_factor,
                "boft_dropout": self.args.dropout}

@contextmanager
def _butterfly_kept() -> Iterator[None]:
    """While PEFT builds BOFT layers, tell it its CUDA kernel exists (its only reason to drop to m = 1). Where the
    kernel does not load, its block-diagonal step is replaced by torch's ``block_diag`` (the same matrices, with
    autograd), which PEFT's own fallback cannot do for m > 1."""
    import peft.tuners.boft.layer as layer
    import torch

    real = layer.get_fbd_cuda
    if not (torch.cuda.is_available() and real() is not None):
        layer.FastBlockDiag = TorchBlockDiag
    layer.get_fbd_cuda = lambda: True
    try:
        yield
    finally:
        layer.get_fbd_cuda = real


class TorchBlockDiag:
    """``FastBlockDiag.apply`` in torch: (m, N, b, b) blocks -> (m, N·b, N·b), one block-diagonal matrix per factor."""

    @staticmethod
    def apply(blocks: Any) -> Any:
        import torch

        return torch.stack([torch.block_diag(*factor) for factor in blocks])
