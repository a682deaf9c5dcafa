"""FourierFT (Gao et al. 2024, "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform", ICML 2024,
arXiv 2405.03003).

    ΔW = α · Re(IDFT₂(F)),   F ∈ C^{d_out×d_in} zero except F[e] = c at n fixed random positions e

Only the n real spectral coefficients c of each adapted module train (zero at init); the positions are drawn once
from a seeded generator (``random_loc_seed``) and shared by every layer, so they are stored as one seed, not as
indices. n is independent of the layer's shape (n ≤ d_out·d_in). PEFT's ``FourierFTConfig`` (n_frequency,
scaling = α, PEFT's defaults n = 1000 and α = 150; the paper tunes α per task).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import weight_shape
from ..models.roles import Target
from ..schema import SEED_MAX, Rule
from . import register
from .args import POSITIVE, POSITIVE_INT, MethodArgs, arg
from .base import Context
from .capabilities import Capabilities
from .peft_backed import PeftMethod


@dataclass
class FourierArgs(MethodArgs):
    n_frequency: int = arg(1000, POSITIVE_INT)
    scaling: float = arg(150.0, POSITIVE)
    random_loc_seed: int = arg(777, Rule("int", 0, SEED_MAX))


@register("fourierft")
class FourierFT(PeftMethod):
    summary = "FourierFT (Gao et al. 2024): ΔW = α·IDFT of n trained spectral coefficients at fixed positions, via PEFT"
    Args = FourierArgs
    capabilities = Capabilities(merge=True, export="peft",
                                quantized_base_reason="PEFT's FourierFT layers have no bitsandbytes variant")
    peft_config_name = "FourierFTConfig"

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"n_frequency": 64}  # the tiny models' smallest projection has 16·32 = 512 entries

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)
        for t in targets:
            out_f, in_f = weight_shape(model.get_submodule(t.name))
            if self.args.n_frequency > out_f * in_f:
                raise ConfigError(f"method 'fourierft': n_frequency {self.args.n_frequency} exceeds the "
                                  f"{out_f}×{in_f} = {out_f * in_f} spectral entries of {t.name}.")

    def config_kwargs(self, model: nn.Module, targets: list[Target], ctx: Context) -> dict[str, Any]:
        return {"n_frequency": self.args.n_frequency, "scaling": self.args.scaling,
                "random_loc_seed": self.args.random_loc_seed}
