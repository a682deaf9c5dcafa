"""Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", ICML, arXiv 1902.00751).

Two bottleneck adapters per transformer layer, in series: one after the attention output projection, one after
the feed-forward block, each ``h ← h + W_up f(W_down h)`` (§2.1, Fig. 2), before the sub-layer's residual
connection and layer norm. W_up = 0 at init (the paper's near-identity initialisation), so the model starts as
the base model. "In addition to the adapter layers, we also train new layer normalization parameters per layer"
(§2.1): ``layer_norm`` (default on) trains every norm inside the transformer layers; the task head trains, the
rest is frozen. Trainable: L · [2 · (2dm + m + d) + norm parameters per layer] + head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..strategy import is_norm
from . import register
from ._adapters import AdapterMethod, BottleneckArgs, layer_of
from .capabilities import Capabilities


@dataclass
class HoulsbyArgs(BottleneckArgs):
    nonlinearity: str = "gelu"
    layer_norm: bool = True  # train the layer norms of every transformer layer (§2.1)


@register("houlsby")
class Houlsby(AdapterMethod):
    summary = "Houlsby adapters (2019): bottlenecks after attention and FFN (+ layer norms); W_up = 0 at init"
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = HoulsbyArgs

    def positions(self) -> tuple[str, ...]:
        return ("attn", "ffn")

    def extra_trainable(self, model: nn.Module) -> list[str]:
        if not self.args.layer_norm:
            return []
        return [f"{n}.{pn}" for n, m in model.named_modules() if is_norm(m) and layer_of(n + ".") is not None
                for pn, _ in m.named_parameters(recurse=False)]
