"""Frozen-feature caching: skip the layers below the lowest trainable parameter (opt-in, ``feature_cache``).

When every trainable parameter of a run lives in transformer layers ≥ k (adapters restricted by patterns to the
top layers, or a method that leaves the lower layers untouched), the hidden states entering layer k depend only on
the frozen embeddings and layers 0..k-1. They are computed once per example — lazily, the first time an example
is met, with those layers in evaluation mode (no dropout) and without gradients — and every later forward starts
at layer k: layers 0..k-2 pass their input through and layer k-1 returns the cached features, while masks,
position embeddings and the task head run as usual.

This changes training in one respect, which is why the option is explicit, part of the run key and recorded:
the cached layers run without dropout (the uncached model applies dropout in them while training). In evaluation
mode, and for models without dropout, the outputs are identical to the uncached model's (``tests/test_features.py``).
The saving is the forward of layers 0..k-1 on every step after an example's first visit (the backward never went
below layer k anyway) and on every evaluation after the first.

The features are kept unpadded per example (rows of real tokens only: with right padding and masked attention
keys, the states at real positions do not depend on the padding), on the model's device, in the dtype the layers
produced. Their size is recorded as ``feature_cache_mb``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn as nn

from .data import Encoded, collate
from .errors import ConfigError


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass early, carrying the hidden states it saw."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer layers: the first ModuleList of ``num_hidden_layers`` modules of one class."""
    cfg = getattr(model, "config", None) or getattr(getattr(model, "base_model", None), "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n and len({type(c) for c in m}) == 1:
            return name, m
    raise ConfigError("feature_cache: cannot find this model's stack of transformer layers (a ModuleList of "
                      f"num_hidden_layers={n} blocks).")


def lowest_trainable_layer(model: nn.Module, list_name: str, count: int) -> int:
    """Index of the lowest layer that holds a trainable parameter (``count`` when none does)."""
    lowest = count
    prefix = list_name + "."
    for name, p in model.named_parameters():
        if p.requires_grad and name.startswith(prefix):
            lowest = min(lowest, int(name[len(prefix):].split(".")[0]))
    return lowest


class FeatureCache:
    """Per-example hidden states entering layer ``k``, per split; serves them to the model's forward."""

    def __init__(self, model: nn.Module,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        self.model = model
        self.list_name, self.layers = layer_list(model)
        self.k = lowest_trainable_layer(model, self.list_name, len(self.layers))
        if self.k == 0:
            raise ConfigError(
                "feature_cache: a trainable parameter lives in layer 0, so there are no frozen layers to cache; "
                "restrict the targets to upper layers (e.g. --targets 're:.*layer\\.[3-5]\\..*(query|value)') "
                "or leave feature_cache off."
            )
        self.autocast = autocast  # the run's precision context, so that features match the uncached forward
        self.splits: dict[str, tuple[Encoded, int]] = {}
        self.store: dict[str, list[torch.Tensor | None]] = {}
        self._checked = False

    def add_split(self, name: str, enc: Encoded, pad_id: int) -> None:
        self.splits[name] = (enc, pad_id)
        self.store[name] = [None] * len(enc)

    def check(self, split: str) -> None:
        """Compute the features of one example now, so that a model the cache cannot serve fails before training."""
        self._compute(split, [0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for feats in self.store.values() for t in feats if t is not None)

    # ------------------------------------------------------------------ computing features
    @torch.no_grad()
    def _compute(self, split: str, idx: list[int]) -> None:
        enc, pad_id = self.splits[split]
        batch = collate(enc, idx, pad_id)
        batch.pop("labels")
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()
        watch = [] if self._checked else self._watch_outside_params()
        hook = self.layers[self.k - 1].register_forward_hook(self._stop)
        try:
            with self.autocast():
                self.model(**batch)
            raise RuntimeError("feature_cache: the forward pass did not reach layer k-1")  # pragma: no cover
        except _Stop as s:
            hidden = s.hidden
        finally:
            hook.remove()
            for h in watch:
                h.remove()
            self.model.train(was_training)
        self._checked = True
        feats = self.store[split]
        lengths = batch["attention_mask"].sum(1).tolist()
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            feats[i] = hidden[row, : int(n)].clone()

    @staticmethod
    def _stop(module: nn.Module, args, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"feature_cache: {type(module).__name__} returns {type(output).__name__}, not a "
                              "tensor of hidden states; this model's layers cannot be cached.")
        raise _Stop(output)

    def _watch_outside_params(self) -> list:
        """Hooks that fail if a trainable module outside the layer stack runs below layer k (a trained embedding)."""
        inside = self.list_name + "."
        hooks = []
        for name, m in self.model.named_modules():
            if name.startswith(inside) or name == self.list_name:
                continue
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                def fail(module, args, name=name):
                    raise ConfigError(f"feature_cache: {name} is trained and runs before layer {self.k}, so the "
                                      "features entering that layer are not frozen.")
                hooks.append(m.register_forward_pre_hook(fail))
        return hooks

    # ------------------------------------------------------------------ serving them
    @contextmanager
    def serving(self, split: str, idx, batch: dict[str, torch.Tensor]) -> Iterator[None]:
        """Within this context a forward of ``batch`` (examples ``idx`` of ``split``) starts at layer k."""
        idx = [int(i) for i in idx]
        feats = self.store[split]
        missing = [i for i in idx if feats[i] is None]
        if missing:
            self._compute(split, missing)
        rows = [feats[i] for i in idx]
        length = batch["attention_mask"].shape[1]
        hidden = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        for r, t in enumerate(rows):
            hidden[r, : t.shape[0]] = t
        patched = list(self.layers[: self.k])
        saved = [layer.__dict__.get("forward") for layer in patched]  # e.g. accelerate's device-map hooks
        for layer in patched[:-1]:
            layer.forward = _pass_through
        patched[-1].forward = lambda *args, **kwargs: hidden
        try:
            yield
        finally:
            for layer, old in zip(patched, saved, strict=True):
                if old is None:
                    del layer.forward
                else:
                    layer.forward = old


def _pass_through(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states
