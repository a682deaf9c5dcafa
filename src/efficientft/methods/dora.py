"""DoRA (Liu et al., 2024, arXiv 2402.09353): weight-decomposed low-rank adaptation, our own fast layer.

Eq. (5) of the paper: W' = m · (W + s·BA) / ||W + s·BA||_c, where ``||·||_c`` is the norm of each output unit's
weight vector (a row of ``nn.Linear``'s (out, in) weight: the norm over the input dimension, as PEFT computes it),
m ∈ R^out is a trained magnitude initialised to ||W||_c (so DoRA equals the base model at initialisation), and
BA is LoRA's update (B = 0 at init). Following §4.3 of the paper (and PEFT), the norm is treated as a constant:
it is detached from the graph, so no gradient flows through it.

Why not PEFT's ``use_dora=True``: every forward, PEFT materialises BA (via an identity matrix pushed through both
factors) and W + s·BA, an (out × in) matrix per adapted layer, to take its row norms — the known 1.2–2× slow-down
of DoRA over LoRA. Here the squared norm of each row i is expanded instead (``W_i`` the i-th row of W)::

    ||W_i + s(BA)_i||² = ||W_i||² + 2s · <B_i, (W Aᵀ)_i> + s² · B_i (A Aᵀ) B_iᵀ

which needs only W Aᵀ (out × r) and A Aᵀ (r × r); ||W_i||² is cached (W is frozen), and in evaluation mode the
whole norm is cached (A and B do not move), so an evaluation pass computes it once per layer. The output is
then ``g ⊙ (x Wᵀ + s (x Aᵀ) Bᵀ) + b`` with g = m / ||·||_c, the low-rank product computed by
:func:`efficientft.lowrank.lowrank_add` (thin-matrix layouts, added to x Wᵀ in the same GEMM).
``tests/test_dora.py`` proves forward, loss and gradients equal to PEFT's DoRA, and export loads into stock
``peft.PeftModel.from_pretrained`` (the magnitude is PEFT's ``lora_magnitude_vector``) to identical logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..lowrank import lowrank_add
from ..models.fused import is_conv1d, out_major_weight
from ..models.roles import Target
from . import register
from ._inject import WrapsTargets
from .base import Context
from .capabilities import Capabilities
from .lora import LoraArgs

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class DoraLinear(nn.Module):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) with a DoRA adapter.

    Parameter names mirror PEFT's saved adapter (``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``)
    so that export is a rename-free copy.
    """

    def __init__(self, base: nn.Module, rank: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base
        for p in base.parameters():
            p.requires_grad = False
        w = out_major_weight(base).detach()
        out_features, in_features = w.shape
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # LoRA's (and PEFT's) default init
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = float(scaling)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.lora_magnitude_vector = nn.Parameter(w.float().norm(dim=1).to(w.dtype))  # m = ||W||_c
        self._w_sq: tuple[tuple, torch.Tensor] | None = None
        self._norm: tuple[tuple, torch.Tensor] | None = None

    def weight(self) -> torch.Tensor:
        return out_major_weight(self.base_layer)

    @staticmethod
    def _stamp(*ts: torch.Tensor) -> tuple:
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in ts)

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W + s·BA||_c per output row (fp32, no graph), without forming W + s·BA.

        In evaluation mode the value is cached (until A, B or W change, or the module goes back to training);
        in training it is computed every forward, as A and B move every step.
        """
        w, a, b = self.weight(), self.lora_A.weight, self.lora_B.weight
        stamp = self._stamp(w, a, b)
        if not self.training and self._norm is not None and self._norm[0] == stamp:
            return self._norm[1]
        w_stamp = self._stamp(w)
        if self._w_sq is None or self._w_sq[0] != w_stamp:
            self._w_sq = (w_stamp, w.float().pow(2).sum(1))
        a32, b32, s = a.float(), b.float(), self.scaling
        cross = (b32 * (w.float() @ a32.t())).sum(1)  # <B_i, (W Aᵀ)_i> = <W_i, (BA)_i>
        delta = ((b32 @ (a32 @ a32.t())) * b32).sum(1)  # B_i (A Aᵀ) B_iᵀ = ||(BA)_i||²
        norm = (self._w_sq[1] + 2 * s * cross + s * s * delta).clamp_min(0).sqrt()
        self._norm = None if self.training else (stamp, norm)
        return norm

    def train(self, mode: bool = True) -> DoraLinear:
        self._norm = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.weight(), self.base_layer.bias
        g = self.lora_magnitude_vector / self.weight_norm().to(self.lora_magnitude_vector.dtype)
        a, b = self.lora_A.weight, self.lora_B.weight
        if self.lora_dropout is None or not self.training:
            y = lowrank_add(F.linear(x, w.to(x.dtype)), x, a, b, self.scaling)  # W x + s·BA x
            y = g.to(y.dtype) * y
            return y if bias is None else y + bias.to(y.dtype)
        # With dropout, as PEFT: W x + b + (g - 1) ⊙ W x' + g ⊙ s·BA x', with x' = dropout(x).
        xd = self.lora_dropout(x)
        base = F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
        wxd = F.linear(xd, w.to(x.dtype))
        y = lowrank_add(wxd, xd, a, b, self.scaling)
        return base - wxd + g.to(y.dtype) * y

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """(m / ||W + s·BA||_c) ⊙ (W + s·BA), in (out, in) layout."""
        w = self.weight().float()
        delta = self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())
        g = self.lora_magnitude_vector.float() / self.weight_norm()
        return g[:, None] * (w + delta)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base module with the adapter folded into its weight."""
        w = self.merged_weight()
        target = self.base_layer.weight
        target.copy_((w.t() if is_conv1d(self.base_layer) else w).to(target.dtype))
        return self.base_layer


@register("dora")
class DoRA(WrapsTargets):
    """Our own layer (not PEFT's: see the module docstring); LoRA's arguments, PEFT's adapter format."""

    summary = "DoRA (Liu et al. 2024): magnitude · direction of W + (alpha/r)·BA; our fast layer, PEFT-format export"
    capabilities = Capabilities(
        rank=True, merge=True, export="peft", quantized_base=False,
        quantized_base_reason="our DoRA layer computes the row norms of the dense base weight W every step, which a "
                              "4/8-bit layer does not hold",
    )

    Args = LoraArgs

    @property
    def alpha(self) -> float:
        return float(self.args.alpha if self.args.alpha is not None else self.args.rank)

    wrapper = DoraLinear

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        return DoraLinear(base, self.args.rank, self.alpha / self.args.rank, self.args.dropout)

    # ------------------------------------------------------------------ PEFT-format export
    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A PEFT adapter folder: ``peft.PeftModel.from_pretrained(base, out_dir)`` runs it with PEFT's own DoRA."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        assert self.ctx is not None, "prepare() must run first"
        config = LoraConfig(
            task_type=self.ctx.peft_task_type, r=self.args.rank, lora_alpha=self.alpha, lora_dropout=self.args.dropout,
            target_modules=[t.name for t in self.targets], modules_to_save=list(self.ctx.heads), use_dora=True,
            fan_in_fan_out=any(is_conv1d(m.base_layer) for m in model.modules()
                               if isinstance(m, DoraLinear)),
            base_model_name_or_path=self.ctx.base_model or None,
        )
        config.save_pretrained(str(out_dir))
        tensors = {PEFT_PREFIX + n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
                   if p.requires_grad}
        save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        return {"format": "peft-adapter"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        """Our layers on a fresh base, filled from a PEFT DoRA adapter folder (ours or PEFT's own)."""
        from safetensors.torch import load_file

        config = json.loads((out_dir / ADAPTER_CONFIG).read_text())
        if not config.get("use_dora"):
            raise ConfigError(f"{out_dir} holds a PEFT adapter without use_dora; it is not a DoRA adapter.")
        model = self.prepare(base, targets, ctx)
        params = dict(model.named_parameters())
        tensors = load_file(str(out_dir / ADAPTER_WEIGHTS))
        with torch.no_grad():
            for key, t in tensors.items():
                name = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default.", ".")
                if name not in params:
                    raise ConfigError(f"{out_dir}: the adapter has a tensor {key!r} this model lacks.")
                params[name].copy_(t)
        return model
