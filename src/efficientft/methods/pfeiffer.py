"""Pfeiffer adapters (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
Learning", EACL, arXiv 2005.00247).

One bottleneck adapter per transformer layer, in series after the feed-forward block only (the placement
AdapterFusion's architecture search chose, with half of Houlsby's adapters): ``h ← h + W_up f(W_down h)`` on the
FFN's output, before the residual connection and layer norm; ReLU and reduction factor 16 by default (the
paper's setting as AdapterHub ships it). W_up = 0 at init, so the model starts as the base model. Only the adapters and the task head train:
L · (2dm + m + d) + head.
"""

from __future__ import annotations

from . import register
from ._adapters import AdapterMethod, BottleneckArgs
from .capabilities import Capabilities


@register("pfeiffer")
class Pfeiffer(AdapterMethod):
    summary = "Pfeiffer adapters (AdapterFusion 2021): one bottleneck after each FFN; W_up = 0 at init"
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = BottleneckArgs

    def positions(self) -> tuple[str, ...]:
        return ("ffn",)
