"""GaLore, Gradient Low-Rank Projection (Zhao et al., ICML 2024, arXiv 2403.03507).

Full-rank training of the targeted weights with a low-rank optimizer state: the gradient G (m × n) of each
targeted weight is projected to rank r, R = Pᵀ G (or G Q when m ≥ n), Adam runs on R, and its update is projected
back, ΔW = α · P N(R) (the paper's Algorithm 1, with scale α). P is refreshed every ``update_proj_gap`` steps
from the SVD of the current gradient. The weights themselves train (their parameter count is the full targeted
weights); the saving is in the optimizer state: Adam's two moments are r × n or m × r instead of m × n. Every
run records the optimizer-state size (``optimizer_state_numel`` / ``_bytes``) next to its memory figures.

This is a thin use of ``galore_torch.GaLoreAdamW`` (the authors' package): our parameter groups (the λ strategy:
W_v's weights at λ × lr, biases and the head at the base rate; weight decay per group) are split into the
projected 2-D weights of the targets and the rest, and only the former carry GaLore's ``rank`` keys. The
defaults follow the authors' GLUE setting (rank 4–8, α = 4, gap 500). Like ``torch.optim.AdamW`` elsewhere in
this benchmark, ε = 1e-8 (``galore_torch`` defaults to 1e-6); its weight decay is applied after the Adam update
rather than before, as in its source. Everything else (targets, GPT-2 fused slices, export, merge) is full
fine-tuning's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..models.fused import SlicedProjection
from ..models.roles import Target
from ..strategy import Strategy
from . import register
from .args import POSITIVE, POSITIVE_INT, MethodArgs, arg, choice
from .base import Context
from .capabilities import Capabilities
from .full import FullFineTuning

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
PROJECTOR_FIELDS = ("rank", "update_proj_gap", "scale", "proj_type", "ortho_matrix")


@dataclass
class GaloreArgs(MethodArgs):
    rank: int = arg(8, POSITIVE_INT)
    update_proj_gap: int = arg(500, POSITIVE_INT)  # T: steps between refreshes of the projector (SVD of the current gradient)
    scale: float = arg(4.0, POSITIVE)  # α: the projected-back update is multiplied by it
    proj_type: str = arg("std", choice(*PROJ_TYPES))  # which side is projected; "std": the smaller dimension (galore_torch's names)


@register("galore")
class GaLore(FullFineTuning):
    summary = "GaLore (Zhao et al. 2024): full-rank weights, Adam state in a rank-r gradient projection"
    # rank: the projection rank must fit every targeted weight (or slice); checked by Method.check_targets
    capabilities = Capabilities(
        fused_slices=True, rank=True, merge=True, export="model", quantized_base=False,
        quantized_base_reason="it trains the base weights themselves (full-rank, projected optimizer state), which "
                              "needs them in full precision",
    )
    Args = GaloreArgs

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.check_targets(model, targets)
        return super().prepare(model, targets, ctx)

    def projected(self, model: nn.Module) -> set[str]:
        """Names of the weights whose gradients are projected: the 2-D weights of the targets (or their slices)."""
        modules = dict(model.named_modules())
        out = set()
        for t in self.targets:
            m = modules[t.name]
            name = f"{t.name}.slices.{t.role}.weight" if isinstance(m, SlicedProjection) else f"{t.name}.weight"
            out.add(name)
        return out

    def param_groups(self, model: nn.Module, strategy: Strategy, lr: float, weight_decay: float) -> list[dict]:
        """The strategy's groups, each split into its projected weights (with GaLore's keys) and the rest."""
        projected = self.projected(model)
        roles = self.param_roles(model)
        out = []
        for g in super().param_groups(model, strategy, lr, weight_decay):
            for low_rank in (True, False):
                pairs = [(n, p) for n, p in zip(g["names"], g["params"], strict=True) if (n in projected) == low_rank]
                if not pairs:
                    continue
                part = {k: v for k, v in g.items() if k not in ("params", "names", "roles")}
                part.update(params=[p for _, p in pairs], names=[n for n, _ in pairs],
                            roles=sorted({roles.get(n) or "-" for n, _ in pairs}))
                if low_rank:
                    part.update(rank=self.args.rank, update_proj_gap=self.args.update_proj_gap,
                                scale=float(self.args.scale), proj_type=self.args.proj_type)
                out.append(part)
        return out

    def optimizer(self, groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        from galore_torch import GaLoreAdamW

        optimizer = GaLoreAdamW(groups, lr=lr, weight_decay=weight_decay, eps=1e-8, no_deprecation_warning=True)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: _dense_projectors(opt))
        return optimizer

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """Adam's moments (rank-r for projected weights) and each projector's orthogonal matrix."""
        out = super().optimizer_state(optimizer)
        for state in optimizer.state.values():
            projector = state.get("projector")
            if projector is not None and projector.ortho_matrix is not None:
                m = projector.ortho_matrix
                out += list(m) if isinstance(m, (list, tuple)) else [m]
        return out

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state with each ``GaLoreProjector`` object written as its fields (the projection
        matrix is a tensor): a checkpoint holds no pickled objects."""
        sd = optimizer.state_dict()
        state = {}
        for i, s in sd["state"].items():
            s = dict(s)
            projector = s.pop("projector", None)
            if projector is not None:
                s["projector"] = {f: getattr(projector, f) for f in PROJECTOR_FIELDS}
            state[i] = s
        return {**sd, "state": state}

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from galore_torch.galore_projector import GaLoreProjector

        optimizer.load_state_dict({**state, "state": {i: {k: v for k, v in s.items() if k != "projector"}
                                                      for i, s in state["state"].items()}})
        params = [q for g in optimizer.param_groups for q in g["params"]]
        for i, s in state["state"].items():
            fields = s.get("projector")
            if fields is not None:
                projector = GaLoreProjector(fields["rank"], update_proj_gap=fields["update_proj_gap"],
                                            scale=fields["scale"], proj_type=fields["proj_type"])
                m = fields["ortho_matrix"]
                projector.ortho_matrix = None if m is None else m.to(params[int(i)].device)
                optimizer.state[params[int(i)]]["projector"] = projector


def _dense_projectors(optimizer: torch.optim.Optimizer) -> None:
    """Each projector's matrix as a dense (row-major) tensor of its own, after every step.

    ``galore_torch`` keeps a slice of the SVD's output (``Vh[:r]`` or ``U[:, :r]``), a strided view of a column-major
    matrix. A checkpoint restores it dense, and a matmul over the same numbers in another layout takes another
    kernel path: the resumed run drifted by ~1e-6 from the uninterrupted one. Made dense here, the projector is
    the same tensor whether it was computed or restored (and no longer holds the whole SVD factor alive)."""
    for state in optimizer.state.values():
        projector = state.get("projector")
        if projector is not None and projector.ortho_matrix is not None:
            m = projector.ortho_matrix
            projector.ortho_matrix = [x.contiguous() for x in m] if isinstance(m, (list, tuple)) else m.contiguous()
