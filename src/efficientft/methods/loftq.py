"""LoftQ (Li et al. 2024, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models", ICLR 2024,
arXiv 2310.08659).

    min_{Q, A, B} ‖W − Q − s·BA‖_F:   Q_t = q_N(W − s·B_{t−1}A_{t−1}),   s·B_tA_t = SVD_r(W − Q_t),   t = 1 … T

A LoRA initialisation for a quantized base: instead of quantizing W and starting from B = 0 (QLoRA, whose start
is off by the whole quantization error W − q_N(W)), LoftQ alternates T times between quantizing the residual and
taking the top-r SVD of the quantization error, so that Q + s·BA starts closer to W. Q is an NF4 matrix (``bits``
4, bitsandbytes' blockwise NF4 with blocks of 64, the one ``--quantize 4bit`` uses) or int8 (``bits`` 8).

Offline and on CPU: PEFT's ``init_lora_weights="loftq"`` computes on "cuda" unconditionally, so the alternation is
done here with bitsandbytes' own quantizer. The frozen base of each adapted layer becomes the dequantized Q (the
values a 4-bit base computes with), so a run measures LoftQ's accuracy without a 4-bit kernel. The init is
deterministic in W, so the export is our own format (B, A and the head; :meth:`reload` recomputes Q from the same
base), and merging gives the plain model Q + s·BA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..models.fused import is_conv1d
from ..models.roles import Target
from ..schema import Rule
from . import register
from .args import POSITIVE_INT, arg
from .base import Context, Method
from .capabilities import Capabilities
from .lora import LoraArgs, LoraBacked


@dataclass
class LoftqArgs(LoraArgs):
    bits: int = arg(4, Rule("int"))  # 4 (NF4) or 8 (int8): check()
    iters: int = arg(1, POSITIVE_INT)  # alternations T (the paper: 1 for 4-bit, up to 5)

    def check(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 (NF4) or 8 (int8), got {self.bits!r}.")


@register("loftq")
class LoftQ(LoraBacked):
    summary = "LoftQ (Li et al. 2024): LoRA whose A, B and quantized base Q minimise ‖W − Q − s·BA‖ (offline, CPU)"
    Args = LoftqArgs
    capabilities = Capabilities(
        rank=True, merge=True, export="efficientft", quantized_base=False,
        quantized_base_reason="it quantizes the full-precision W itself, alternating with the SVD of the error; a "
                              "base loaded in 4 bits no longer has W (LoftQ simulates the quantized base instead)")

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft.tuners.lora import LoraLayer

        model = super().prepare(model, targets, ctx)
        for m in model.modules():
            if isinstance(m, LoraLayer) and "default" in m.lora_A:
                base = m.get_base_layer()
                conv1d = is_conv1d(base)  # GPT-2 stores W transposed
                w = (base.weight.T if conv1d else base.weight).detach().float()
                q, a, b = loftq_factors(w, self.args.rank, float(m.scaling["default"]), self.args.bits,
                                        self.args.iters)
                with torch.no_grad():
                    base.weight.copy_(q.T if conv1d else q)
                    m.lora_A["default"].weight.copy_(a)
                    m.lora_B["default"].weight.copy_(b)
        return model

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """B, A and the head as safetensors: a PEFT adapter would need the LoftQ base Q beside it."""
        return Method.write_export(self, model, out_dir)

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        return Method.reload(self, base, out_dir, targets, ctx)


def quantize_roundtrip(w: torch.Tensor, bits: int) -> torch.Tensor:
    """q_N(w) as the values it dequantizes to: bitsandbytes' NF4 (blocks of 64) or row-wise int8."""
    import bitsandbytes.functional as bf

    if bits == 4:
        packed, state = bf.quantize_4bit(w.contiguous(), blocksize=64, quant_type="nf4")
        return bf.dequantize_4bit(packed, state).to(w.dtype)
    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    return torch.round(w / scale).clamp(-127, 127) * scale


def loftq_factors(w: torch.Tensor, rank: int, scale: float, bits: int, iters: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, A, B) with Q = q_N(W − s·BA) and s·BA the rank-r SVD of W − Q, after ``iters`` alternations."""
    lowrank = torch.zeros_like(w)
    for _ in range(iters):
        q = quantize_roundtrip(w - lowrank, bits)
        u, sv, vh = torch.linalg.svd(w - q, full_matrices=False)
        root = sv[:rank].sqrt()
        left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
        lowrank = left @ right
    return q, right / math.sqrt(scale), left / math.sqrt(scale)
