"""LoFiT, Localized Fine-Tuning on LLM Representations (Yin, Ye & Durrett 2024, NeurIPS, arXiv 2406.01563;
reference code github.com/fc2869/lo-fit, ``lofit_trainer.py`` and the attention of ``models/modeling_llama.py``).

Two stages on the outputs z_l^i ∈ R^{d_head} of the attention heads (what the output projection W_o reads;
the reference applies both to ``attn_output`` before ``o_proj``):

1. **Head selection**: every head's output is rescaled, z ← (1 + A_l^i) ⊙ z, with A ~ N(0, σ²), σ = 10⁻³, trained
   under the loss + ``l1_lambda`` · Σ|A| (5e-4) and AdamW at ``select_lr`` (5e-3, linear decay), the base frozen.
   A head's importance is ‖A_l^i‖₂; the top K heads are kept (``top_k``; 0: 3% of all heads, at least one: the
   paper localises to about 3%, e.g. the reference's Llama 2-7B scripts tune 32 of 1,024 heads).
2. **Bias tuning**: a fresh model (A dropped, the task head back at its initial values) learns offsets
   z ← z + v_l^i on the K selected heads only, v ~ N(0, σ²), without L1. The other heads have no parameter at all,
   so they are exactly untouched. Trainable parameters: K · d_head (+ the task head).

Stage 1 runs inside :meth:`init_from_data`, before the optimizer exists, for ``select_steps`` batches (0: the run's
own number of steps, as the reference trains both stages for the same epochs); the task head trains with A there (a
classifier's random head would otherwise make the loss, and so the importance, meaningless) and is restored after.
Stage 2 is the run itself, at the run's lr. The selection is method state: saved in checkpoints (resume does not
redo stage 1) and in the export. The offset enters W_o's input, so it merges exactly into W_o's bias:
b' = b + W_o v (a bias is added where W_o has none, as LLaMA's).

Capabilities: sub-layer positions (the attention output of every layer, via the role map); no W_v parameter
(λ ≠ 1 refused); merge; our export format.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import out_major_weight, replace_module, weight_shape
from ..models.large import is_quantized
from ..models.roles import Target, resolve_targets
from . import register
from ._adapters import float_like
from .args import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, MethodArgs, arg
from .base import TRAINABLE_FILE, Context, Method
from .capabilities import Capabilities

INIT_STD = 1e-3  # the reference's σ for A and v


@dataclass
class LoFiTArgs(MethodArgs):
    top_k: int = arg(0, NON_NEGATIVE_INT, note="0: the default rule")  # heads to tune; 0: 3% of all heads (at least one)
    select_steps: int = arg(0, NON_NEGATIVE_INT, note="0: the default rule")  # stage-1 batches; 0: the run's steps
    select_lr: float = arg(5.0e-3, POSITIVE)  # stage 1's learning rate for A
    l1_lambda: float = arg(5.0e-4, NON_NEGATIVE)  # stage 1's L1 weight on A


class HeadOutputs(nn.Module):
    """W_o with LoFiT's transform of its input, the concatenated head outputs: z_i ← (1 + A_i) ⊙ z_i (stage 1, while
    ``scale`` exists), then z_i ← z_i + v_i on the selected heads ``heads`` (stage 2)."""

    def __init__(self, base: nn.Module, num_heads: int) -> None:
        super().__init__()
        self.base = base
        self.num_heads = num_heads
        self.head_dim = weight_shape(base)[1] // num_heads
        self.scale: nn.Parameter | None = None
        self.offset: nn.Parameter | None = None
        self.register_buffer("heads", torch.zeros(0, dtype=torch.long))

    def select(self, heads: list[int], like: torch.Tensor, init: bool = True) -> None:
        """Stage 2's offsets on ``heads`` (drawn from N(0, σ²) where ``init``, else zeros to be loaded)."""
        self.heads = torch.tensor(sorted(heads), dtype=torch.long, device=like.device)
        if not heads:
            self.offset = None
            return
        v = torch.zeros(len(heads), self.head_dim, dtype=like.dtype, device=like.device)
        if init:
            nn.init.normal_(v, 0.0, INIT_STD)
        self.offset = nn.Parameter(v)

    def full_offset(self) -> torch.Tensor:
        """The offsets of all heads (zero on the unselected), flattened as W_o's input."""
        full = self.offset.new_zeros(self.num_heads, self.head_dim)
        return full.index_copy(0, self.heads, self.offset).reshape(-1)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.scale is not None:
            shape = x.shape
            x = (x.reshape(*shape[:-1], self.num_heads, self.head_dim) * (1 + self.scale.to(x.dtype))).reshape(shape)
        if self.offset is not None:
            x = x + self.full_offset().to(x.dtype)
        return self.base(x, *args, **kwargs)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """W_o with b' = b + W_o v (a bias is added where W_o has none)."""
        base = self.base
        if self.offset is None:
            return base
        w = out_major_weight(base)
        shift = w @ self.full_offset().to(w.dtype)
        if getattr(base, "bias", None) is None:
            base.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=False)
        base.bias += shift
        return base


def _sites(model: nn.Module) -> list[tuple[str, HeadOutputs]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, HeadOutputs)]


@register("lofit")
class LoFiT(Method):
    summary = ("LoFiT (Yin et al. 2024): select the top-k attention heads by a learned scaling's norm, then train "
               "offsets on their outputs only")
    Args = LoFiTArgs
    capabilities = Capabilities(targets="positions", v_role=False, merge=True, export="efficientft",
                                quantized_base_reason="its head selection and merge have not been made to work "
                                "with a quantized base")

    @classmethod
    def test_args(cls, arch: str = "bert") -> dict[str, Any] | None:
        return {"top_k": 2, "select_steps": 2}

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        self.targets, self.ctx = [], ctx
        for p in model.parameters():
            p.requires_grad = False
        heads = int(getattr(model.config, "num_attention_heads", 0) or 0)
        outputs = resolve_targets(model, "o")
        if not heads or not outputs:
            raise ConfigError("method 'lofit' needs attention heads and their output projections (role 'o'), found "
                              "none in this model.")
        for t in outputs:
            replace_module(model, t.name, HeadOutputs(model.get_submodule(t.name), heads))
        for n, p in model.named_parameters():
            if any(n.startswith(h + ".") for h in ctx.heads):
                p.requires_grad = True
        return model

    def top_k(self, model: nn.Module) -> int:
        total = sum(m.num_heads for _, m in _sites(model))
        k = self.args.top_k or max(1, round(0.03 * total))
        if k > total:
            raise ConfigError(f"method 'lofit': top_k {k} is more than the model's {total} attention heads.")
        return k

    def init_from_data(self, model: nn.Module, batches: typing.Iterable[dict]) -> None:
        """Stage 1: learn the scalings A under L1, rank the heads by ‖A‖₂, keep the top K; then stage 2's offsets."""
        sites = _sites(model)
        like = float_like(model)
        k = self.top_k(model)
        steps = self.args.select_steps or max(1, self.ctx.total_steps if self.ctx else 1)
        head_params = [p for p in model.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in head_params]
        for _, m in sites:
            m.scale = nn.Parameter(torch.empty(m.num_heads, m.head_dim, dtype=like.dtype, device=like.device))
            nn.init.normal_(m.scale, 0.0, INIT_STD)
        scales = [m.scale for _, m in sites]
        opt = torch.optim.AdamW([{"params": scales}, {"params": head_params}], lr=self.args.select_lr,
                                weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
        was_training = model.training
        model.train()
        it = iter(batches)
        try:
            for _ in range(steps):
                loss = model(**next(it)).loss
                loss = loss + self.args.l1_lambda * sum(a.abs().sum() for a in scales)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        finally:
            model.train(was_training)
            with torch.no_grad():
                for p, v in zip(head_params, saved, strict=True):
                    p.copy_(v)
                    p.grad = None
        importance = torch.cat([m.scale.detach().float().norm(dim=-1) for _, m in sites])
        self.importance = importance.cpu()
        chosen = torch.argsort(importance, descending=True, stable=True)[:k].tolist()
        at = 0
        for _, m in sites:
            m.select([h - at for h in chosen if at <= h < at + m.num_heads], like)
            m.scale = None  # stage 2 is a fresh model: the scalings are dropped
            at += m.num_heads

    def selected(self, model: nn.Module) -> dict[str, list[int]]:
        """The selected heads of each attention output (by module name)."""
        return {n: m.heads.tolist() for n, m in _sites(model)}

    def _restore(self, model: nn.Module, heads: dict[str, list[int]]) -> None:
        like = float_like(model)
        sites = dict(_sites(model))
        unknown = [n for n in heads if n not in sites]
        if unknown:
            raise ConfigError(f"method 'lofit': saved heads for modules this model lacks: {unknown[:3]}.")
        for n, m in sites.items():
            m.select(list(heads.get(n, [])), like, init=False)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        return {"heads": self.selected(model)}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        self._restore(model, state["heads"])

    def merge(self, model: nn.Module) -> nn.Module:
        if is_quantized(model):
            raise ConfigError("method 'lofit' cannot merge into a quantized base; export its offsets instead.")
        for name, m in _sites(model):
            replace_module(model, name, m.merged())
        return model

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        import json

        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        heads = self.selected(model)
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata={"method": self.name, "heads": json.dumps(heads)})
        return {"format": "efficientft-lofit", "heads": sum(len(v) for v in heads.values())}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        import json

        from safetensors import safe_open

        with safe_open(str(out_dir / TRAINABLE_FILE), "pt") as f:
            heads = json.loads((f.metadata() or {}).get("heads", "null"))
        if heads is None:
            raise ConfigError(f"{out_dir}: not a LoFiT export (no selected heads in its metadata).")
        model = self.prepare(base, [], ctx)
        self._restore(model, heads)
        from safetensors.torch import load_file

        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in load_file(str(out_dir / TRAINABLE_FILE)).items():
                params[n].copy_(t)
        return model
