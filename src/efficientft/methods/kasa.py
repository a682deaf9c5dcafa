"""KaSA, Knowledge-aware Singular-value Adaptation (Wang et al., ICLR 2025, arXiv 2412.06071).

Two stages (the paper's Section 3):

1. *Knowledge-based SVD truncation*: the base weight W = U Σ Vᵀ (k = min(out, in) singular triplets) loses its r
   smallest singular components, the noisy / long-tail knowledge: W_world = U_{k−r} Σ_{k−r} V_{k−r}ᵀ is the new
   frozen base. (So, unlike LoRA, the model at initialisation is the truncated base, not the original one.)
2. *Knowledge-aware singular-value adaptation*: the update in SVD form, ΔW = s · ΔU diag(ΔΣ) ΔVᵀ, with ΔU
   (out × r) starting at zero, ΔVᵀ (r × in) Kaiming-initialised as LoRA's A, and r learnable singular values ΔΣ
   drawn from N(0, 1) as the reference code draws them (juyongjiang/KaSA, ``lora_diag = torch.randn(r)``; with
   ΔU = 0 the update is zero at the start whatever they are, but their start sets the first steps of ΔU).

The training loss adds the paper's two regularisers, averaged over the adapted modules as the reference's
``loss_fn`` does (``(β · Σ‖ΔΣ‖² + γ · Σ orth) / block_num``, block_num the number of modules):
L = L_task + (1/M) Σ_modules [β · ‖ΔΣ‖² + γ · (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F)], the second term keeping ΔU, ΔV
near semi-orthogonal so that ΔΣ stay singular values. (A sum would be M times stronger at the same β, γ: 12× on
MiniLM's Q, V.) The orthogonality is the paper's r × r form; the reference code's ``loss_fn`` takes the Gram of
the other side (in × in for A, out × out for B), whose distance to I is at least √(d − r) at any weights (19.4 on
MiniLM, d = 384, r = 8): a near-constant whose gradient pulls every factor's norm, not their orthogonality. They are added as gradients in
:meth:`Kasa.after_backward` (the loop's hook after the task loss's backward, before clipping): the same gradient
as adding them to the loss, without the loop knowing of them. Merging writes W_world + ΔW into the weight; export
is our safetensors (the truncation is recomputed from the same base on reload).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.fused import out_major_weight, weight_shape
from ..models.roles import Target
from . import register
from ._decomp import DENSE_BASE, check_rank, frozen, set_out_major
from ._inject import WrapsTargets
from .args import NON_NEGATIVE, OPTIONAL_POSITIVE, POSITIVE_INT, MethodArgs, arg
from .capabilities import Capabilities


@dataclass
class KasaArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)  # r: the smallest singular components dropped, and the rank of the update
    alpha: float | None = arg(None, OPTIONAL_POSITIVE)  # scaling s = alpha / rank (default alpha = rank: s = 1)
    beta: float = arg(1e-4, NON_NEGATIVE)  # β: weight of ‖ΔΣ‖²
    gamma: float = arg(1e-3, NON_NEGATIVE)  # γ: weight of the orthogonality of ΔU and ΔV


class KasaLinear(nn.Module):
    """W_world x + s · ΔU (ΔΣ ⊙ ΔVᵀ x): the truncated base plus the SVD-form update."""

    def __init__(self, base: nn.Module, rank: int, scale: float) -> None:
        super().__init__()
        self.base = frozen(base)
        w = out_major_weight(base).detach()
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        keep = s.numel() - rank
        set_out_major(base, (u[:, :keep] * s[:keep]) @ vh[:keep])  # W_world: the r smallest components dropped
        self.scaling = scale
        out_f, in_f = w.shape
        self.V = nn.Parameter(torch.empty(rank, in_f, dtype=w.dtype, device=w.device))  # ΔVᵀ
        nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
        self.U = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))  # ΔU
        self.sigma = nn.Parameter(torch.randn(rank, dtype=w.dtype, device=w.device))  # ΔΣ, as the reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.V.to(x.dtype)) * self.sigma.to(x.dtype)
        return self.base(x) + self.scaling * F.linear(h, self.U.to(x.dtype))

    def regulariser(self, beta: float, gamma: float) -> torch.Tensor:
        """β ‖ΔΣ‖² + γ (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F) (ΔVᵀΔV as the r × r Gram of ΔVᵀ's rows)."""
        eye = torch.eye(self.sigma.numel(), dtype=self.U.dtype, device=self.U.device)
        orth = torch.linalg.matrix_norm(self.U.t() @ self.U - eye) + torch.linalg.matrix_norm(self.V @ self.V.t() - eye)
        return beta * self.sigma.pow(2).sum() + gamma * orth

    @torch.no_grad()
    def merged(self) -> nn.Module:
        w = out_major_weight(self.base)
        set_out_major(self.base, w + self.scaling * (self.U * self.sigma) @ self.V)
        return self.base


@register("kasa")
class Kasa(WrapsTargets):
    summary = "KaSA (Wang et al. 2025): drop W's r smallest singular triplets; SVD-form update with learned singular values"
    Args = KasaArgs
    revision = 2  # the regulariser is the mean over modules and the singular-value offsets are drawn, as the reference's
    capabilities = Capabilities(rank=True, quantized_base=False, quantized_base_reason=DENSE_BASE, merge=True,
                                export="efficientft")

    wrapper = KasaLinear

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)  # no fused slices; the rank fits every weight
        for t in targets:  # and at least one singular component stays in W_world
            shape = weight_shape(model.get_submodule(t.name))
            check_rank(self.args.rank, t.name, shape, limit=min(shape) - 1)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        alpha = self.args.alpha if self.args.alpha is not None else self.args.rank
        return KasaLinear(base, self.args.rank, alpha / self.args.rank)

    def regulariser(self, model: nn.Module) -> torch.Tensor:
        """The mean of the adapted modules' regularisers (the part of KaSA's loss beyond the task's)."""
        terms = [m.regulariser(float(self.args.beta), float(self.args.gamma))
                 for m in model.modules() if isinstance(m, KasaLinear)]
        return torch.stack(terms).mean()

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Add the regulariser's gradient to the task loss's (as if it were part of the loss)."""
        if self.args.beta or self.args.gamma:
            self.regulariser(model).backward()

