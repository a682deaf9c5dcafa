"""SSF, Scaling & Shifting Your Features (Lian et al. 2022, NeurIPS, arXiv 2210.08823).

After each targeted operation a learned scale γ and shift β act on its output features, ``y = γ ⊙ x + β``
(§3.2); only γ, β (and the task head) train, 2 × out_features per targeted module. Initialised as the authors'
code does (dongzelian/SSF, ``init_ssf_scale_shift``): γ ~ N(1, 0.02²), β ~ N(0, 0.02²), so the model starts next
to the base model, not exactly at it. Because the transform is linear and follows a linear layer, it re-parameterises
into that layer (§3.2, "re-parameterization"): ``W' = diag(γ) W``, ``b' = γ ⊙ b + β``, so :meth:`SSF.merge` leaves a
plain model with no extra inference cost. On GPT-2's fused ``c_attn`` each chosen role's rows get their own γ, β
(under ``ssf.<role>``), so "qv" leaves K's outputs untouched and λ finds W_v's. λ multiplies the rate of W_v's
γ and β. γ and β get no weight decay (decay would pull γ to 0, not to its identity value 1; the paper's code
excludes 1-D parameters from weight decay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import out_major_weight, weight_shape
from ..models.large import is_quantized
from ..models.roles import Target
from ..strategy import Strategy
from . import register
from ._adapters import float_like
from ._inject import WrapsTargets
from .base import Context
from .capabilities import Capabilities

INIT_STD = 0.02  # the reference's std of γ around 1 and of β around 0


class ScaleShift(nn.Module):
    def __init__(self, rows: int, like: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(rows, dtype=like.dtype, device=like.device))
        self.shift = nn.Parameter(torch.empty(rows, dtype=like.dtype, device=like.device))
        nn.init.normal_(self.scale, mean=1.0, std=INIT_STD)
        nn.init.normal_(self.shift, std=INIT_STD)


class SSFProjection(nn.Module):
    """A frozen projection whose output rows [a, z) of each key are scaled and shifted: ``γ ⊙ (W x + b) + β``."""

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], like: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        self.ranges = dict(sorted(slices.items(), key=lambda kv: kv[1]))
        self.ssf = nn.ModuleDict({k: ScaleShift(z - a, like) for k, (a, z) in self.ranges.items()})

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base(*args, **kwargs)
        parts, at = [], 0
        for key, (a, z) in self.ranges.items():
            f = self.ssf[key]
            parts += [y[..., at:a], (y[..., a:z] * f.scale.to(y.dtype) + f.shift.to(y.dtype))]
            at = z
        parts.append(y[..., at:])
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base module with W' = diag(γ) W, b' = γ ⊙ b + β on each key's rows; a projection without a bias
        (LLaMA's) gets one, b' = β, since nothing else can carry the shift."""
        base = self.base
        rows = weight_shape(base)[0]
        w = out_major_weight(base)  # a view: for Conv1D this writes through into the transposed weight
        if getattr(base, "bias", None) is None:
            base.bias = nn.Parameter(torch.zeros(rows, dtype=w.dtype, device=w.device), requires_grad=False)
        for key, (a, z) in self.ranges.items():
            f = self.ssf[key]
            w[a:z] *= f.scale.to(w.dtype)[:, None]
            base.bias[a:z] = base.bias[a:z] * f.scale.to(w.dtype) + f.shift.to(w.dtype)
        return base


@register("ssf")
class SSF(WrapsTargets):
    summary = "SSF (Lian et al. 2022): y = gamma ⊙ x + beta after the targets (near 1, 0 at init); merges into W, b"
    revision = 2  # γ ~ N(1, 0.02²), β ~ N(0, 0.02²), as the reference code's (was exactly 1 and 0)
    capabilities = Capabilities(targets="linear", fused_slices=True, v_role=True, quantized_base=True, merge=True,
                                export="efficientft")

    wrapper = SSFProjection

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self._like = float_like(model)  # γ and β in the model's float type (a 4/8-bit layer's weight is not)
        return super().prepare(model, targets, ctx)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        slices = {t.role or "all": t.out_slice or (0, weight_shape(base)[0]) for t in targets}
        return SSFProjection(base, slices, self._like)

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        groups = super().param_groups(model, strategy, lr, weight_decay)
        return without_decay(groups, self.param_roles(model), lambda n: ".ssf." in n)

    def merge(self, model: nn.Module) -> nn.Module:
        if is_quantized(model):
            raise ConfigError("method 'ssf' cannot merge into a quantized base (a 4/8-bit weight cannot be "
                              "rescaled in place); export γ, β instead.")
        return super().merge(model)

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        info = super().write_export(model, out_dir)
        return {**info, "format": "efficientft-ssf"}


def without_decay(groups: list[dict], roles: dict[str, str | None], match: Any) -> list[dict]:
    """The optimizer groups with the parameters ``match`` selects moved to weight decay 0 (same learning rate);
    ``roles``: every parameter's role, to keep each group's role list exact."""
    out: dict[tuple[float, float], dict] = {}
    for g in groups:
        for name, p in zip(g["names"], g["params"], strict=True):
            decay = 0.0 if match(name) else g["weight_decay"]
            h = out.get((g["lr_scale"], decay))
            if h is None:
                h = out[(g["lr_scale"], decay)] = {**g, "weight_decay": decay, "params": [], "names": [],
                                                   "roles": set()}
            h["params"].append(p)
            h["names"].append(name)
            h["roles"].add(roles.get(name) or "-")
    for h in out.values():
        h["roles"] = sorted(h["roles"])
    return [out[k] for k in sorted(out)]
