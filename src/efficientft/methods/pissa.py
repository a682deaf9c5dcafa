"""PiSSA (Meng, Wang & Zhang 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
Language Models", arXiv 2404.02948).

LoRA starts from ΔW = 0 with a random A; PiSSA instead puts W's principal part into the adapter: with the SVD
W = U S Vᵀ, A = diag(√(S_r/s)) V_rᵀ and B = U_r diag(√(S_r/s)) (s = α/r, so s·BA = U_r S_r V_rᵀ), and the frozen
base becomes the residual W_res = W − s·BA. The model computes exactly W at init, but training moves the principal
directions. ``svd: exact`` is the full SVD (PEFT ``init_lora_weights="pissa"``); ``svd: randomized`` is the paper's
fast variant with ``niter`` subspace iterations (``"pissa_niter_K"``, via ``torch.svd_lowrank``).

Export converts to a plain LoRA delta for the original W (see :mod:`efficientft.methods._residual`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import register
from ._residual import ResidualLoRA
from .args import NON_NEGATIVE_INT, arg, choice
from .capabilities import Capabilities
from .lora import LoraArgs

SVD_KINDS = ("exact", "randomized")


@dataclass
class PissaArgs(LoraArgs):
    svd: str = arg("exact", choice(*SVD_KINDS))  # exact | randomized
    niter: int = arg(4, NON_NEGATIVE_INT)  # subspace iterations of the randomized SVD


@register("pissa")
class PiSSA(ResidualLoRA):
    summary = "PiSSA (Meng et al. 2024): LoRA initialised from W's top-r singular triplets, base = residual"
    capabilities = Capabilities(
        rank=True, merge=True, export="peft", quantized_base=False,
        quantized_base_reason="it factorises the base weight W by SVD and rewrites it as the residual, which needs W "
                              "in full precision (quantize the residual model yourself after a full-precision init)",
    )
    Args = PissaArgs

    def peft_kwargs(self) -> dict[str, Any]:
        init = "pissa" if self.args.svd == "exact" else f"pissa_niter_{self.args.niter}"
        return {"init_lora_weights": init}
