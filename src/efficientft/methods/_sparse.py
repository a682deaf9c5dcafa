"""Sparse increments on fixed entries of the targeted weights, shared by SIFT and NeuroAda.

Each targeted weight W (out × in) gets a trainable vector of k values at fixed (row, column) positions, added to the
frozen pretrained entries in the forward pass: W' = W + Δ, Δ zero but at those positions. The optimizer only ever
sees the k values, so every other entry stays bit-identical to the pretrained one, with AdamW's momentum and
decoupled weight decay too (masking the gradient of a dense weight would not hold: weight decay moves every entry).
On GPT-2's fused ``c_attn`` each chosen role (Q, V) gets its own values within its rows, under ``sparse.<role>``, so
the λ strategy finds W_v's values and the K rows never change. What differs between the methods is only which
entries are chosen (:meth:`SparseDelta.choose`) and how many (:meth:`SparseIncrements.count`).

Merge scatter-adds the values into W (a plain Hugging Face model again); export is our own safetensors file (the
chosen indices, the values and the head).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.fused import out_major_weight
from ..models.roles import Target
from ._inject import WrapsTargets
from .base import TRAINABLE_FILE, Context


class SparseIncrement(nn.Module):
    """k trainable values at fixed positions ``index`` = (rows, cols) of one weight, within rows [a, z)."""

    def __init__(self, rows: tuple[int, int], d_in: int, k: int, like: torch.Tensor) -> None:
        super().__init__()
        self.span = rows
        self.d_in = d_in
        self.values = nn.Parameter(torch.zeros(k, dtype=like.dtype, device=like.device))
        self.register_buffer("index", torch.zeros(2, k, dtype=torch.long, device=like.device))


class SparseDelta(nn.Module):
    """A projection whose weight is the frozen pretrained weight with sparse increments at chosen entries.

    ``slices`` maps each part's key (a role, or "all") to its rows; ``counts`` maps it to its number of values.
    """

    def __init__(self, base: nn.Module, slices: dict[str, tuple[int, int]], counts: dict[str, int]) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        w = out_major_weight(base)
        self.sparse = nn.ModuleDict({
            key: SparseIncrement((a, z), w.shape[1], counts[key], w)
            for key, (a, z) in sorted(slices.items(), key=lambda kv: kv[1])
        })
        self.chosen = False  # set once the entries are chosen (from data or the weights) or loaded (from an export)

    def _increment(self) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        parts = list(self.sparse.values())
        index = torch.cat([p.index for p in parts], dim=1)
        return (index[0], index[1]), torch.cat([p.values for p in parts])

    def weight(self) -> torch.Tensor:
        """The effective weight, (out, in) layout: pretrained entries, with w + δ at the chosen ones."""
        w = out_major_weight(self.base)
        at, values = self._increment()
        return torch.index_put(w, at, w[at] + values.to(w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.chosen:  # before selection the increment is zero: the pretrained function
            return self.base(x)
        b = getattr(self.base, "bias", None)
        return F.linear(x, self.weight().to(x.dtype), None if b is None else b.to(x.dtype))

    @torch.no_grad()
    def choose(self, score: torch.Tensor, per_row: bool = False) -> None:
        """Train the entries of largest ``score`` ((out, in) layout); increments reset. Each part takes its k
        entries from all of its rows, or, ``per_row``, k / rows from each row (the same number in every row)."""
        for part in self.sparse.values():
            a, z = part.span
            k = part.values.numel()
            if per_row:
                cols = torch.topk(score[a:z], k // (z - a), dim=1).indices
                rows = torch.arange(a, z, device=cols.device).unsqueeze(1).expand_as(cols)
                part.index.copy_(torch.stack([rows.flatten(), cols.flatten()]))
            else:
                top = torch.topk(score[a:z].flatten(), k).indices
                part.index.copy_(torch.stack([top // part.d_in + a, top % part.d_in]))
            part.values.zero_()
        self.chosen = True

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base module with the increments written into its weight (the same sums as the forward pass)."""
        w = out_major_weight(self.base)  # a view: for Conv1D this writes through into the transposed weight
        at, values = self._increment()
        w[at] = w[at] + values.to(w.dtype)
        return self.base


def sparse_modules(model: nn.Module) -> list[tuple[str, SparseDelta]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseDelta)]


class SparseIncrements(WrapsTargets):
    """A method that trains sparse increments (:class:`SparseDelta`) on its targets: how many values each part
    gets is :meth:`count`; the chosen entries are method state (resume), exported and reloaded with the values."""

    wrapper = SparseDelta
    args_hint = "other method_args"  # named when an export's shapes do not fit: what likely differed

    def count(self, rows: int, d_in: int) -> int:
        """The number of trained values of a part of ``rows`` rows of a weight with ``d_in`` inputs."""
        raise NotImplementedError

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        d_out, d_in = out_major_weight(base).shape
        slices = {t.role or "all": t.out_slice or (0, d_out) for t in targets}
        return SparseDelta(base, slices, {key: self.count(z - a, d_in) for key, (a, z) in slices.items()})

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The chosen entries of every sparse increment (the selection is not redone on resume)."""
        return {f"{name}.sparse.{key}": part.index for name, m in sparse_modules(model) for key, part in m.sparse.items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, m in sparse_modules(model):
                for key, part in m.sparse.items():
                    part.index.copy_(state[f"{name}.sparse.{key}"])
                m.chosen = True

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """Our own safetensors: the chosen indices (``...sparse.<key>.index``, (2, k): rows, cols), values, head."""
        from safetensors.torch import save_file

        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        for name, m in sparse_modules(model):
            for key, part in m.sparse.items():
                tensors[f"{name}.sparse.{key}.index"] = part.index.contiguous().cpu()
        meta = {"method": self.name, **{k: repr(v) for k, v in self.args_dict().items()}}
        save_file(tensors, str(out_dir / TRAINABLE_FILE), metadata=meta)
        return {"format": f"efficientft-{self.name}"}

    def reload(self, base: nn.Module, out_dir: Path, targets: list[Target], ctx: Context) -> nn.Module:
        from safetensors.torch import load_file

        model = self.prepare(base, targets, ctx)
        tensors = load_file(str(out_dir / TRAINABLE_FILE))
        state = model.state_dict()
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        wanted |= {f"{name}.sparse.{key}.index" for name, m in sparse_modules(model) for key in m.sparse}
        missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
        if missing or extra:
            raise ConfigError(f"{out_dir}: this {self.name} export does not fit the model (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); reload it with the targets it was trained with.")
        bad = [n for n in tensors if tensors[n].shape != state[n].shape]
        if bad:
            raise ConfigError(f"{out_dir}: {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model expects "
                              f"{tuple(state[bad[0]].shape)}; was it trained with {self.args_hint}?")
        model.load_state_dict(tensors, strict=False)
        for _, m in sparse_modules(model):
            m.chosen = True
        return model
