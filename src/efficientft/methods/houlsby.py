"""Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", ICML, arXiv 1902.00751).

Two bottleneck adapters per transformer layer, in series: one after the attention output projection, one after
the feed-forward block, each ``h ← h + W_up f(W_down h)`` (§2.1, Fig. 2), before the sub-layer's residual
connection and layer norm. Near-identity initialisation as the authors' code draws it (google-research/adapter-bert,
``feedforward_adapter``: ``truncated_normal_initializer(stddev=init_scale)`` with ``adapter_init_scale`` 1e-3, zero
biases): W_down and W_up both with std 10⁻³, truncated at two standard deviations, so the model starts next to the
base model, not exactly at it (a W_up of zeros, as Pfeiffer's, would be exact). "In addition to the adapter layers,
we also train new layer normalization parameters per layer" (§2.1): ``layer_norm`` (default on) trains every norm
inside the transformer layers; the task head trains, the rest is frozen. Trainable: L · [2 · (2dm + m + d) + norm parameters per layer] + head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..strategy import is_norm
from . import register
from ._adapters import NONLINEARITY, AdapterMethod, Bottleneck, BottleneckArgs, layer_of, linear_bottleneck
from .args import BOOL, arg
from .capabilities import Capabilities

INIT_SCALE = 1e-3  # adapter-bert's adapter_init_scale: the std of both weights


def near_identity(down: nn.Linear, up: nn.Linear) -> None:
    """adapter-bert's init: both weights with std INIT_SCALE, truncated at ±2 std (TF's truncated normal)."""
    for w in (down.weight, up.weight):
        nn.init.trunc_normal_(w, std=INIT_SCALE, a=-2 * INIT_SCALE, b=2 * INIT_SCALE)


@dataclass
class HoulsbyArgs(BottleneckArgs):
    nonlinearity: str = arg("gelu", NONLINEARITY)
    layer_norm: bool = arg(True, BOOL)  # train the layer norms of every transformer layer (§2.1)


@register("houlsby")
class Houlsby(AdapterMethod):
    summary = "Houlsby adapters (2019): bottlenecks after attention and FFN (+ layer norms); near-identity init"
    revision = 2  # both projections drawn truncated-normal with std 1e-3, as adapter-bert's (was N(0, 1e-2) and zero)
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = HoulsbyArgs

    def positions(self) -> tuple[str, ...]:
        return ("attn", "ffn")

    def build(self, d: int, like: torch.Tensor) -> Bottleneck:
        return linear_bottleneck(d, self.args.size(d), self.args.nonlinearity, like, init=near_identity)

    def extra_trainable(self, model: nn.Module) -> list[str]:
        if not self.args.layer_norm:
            return []
        return [f"{n}.{pn}" for n, m in model.named_modules() if is_norm(m) and layer_of(n + ".") is not None
                for pn, _ in m.named_parameters(recurse=False)]
