"""Pfeiffer adapters (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer
Learning", EACL, arXiv 2005.00247).

One bottleneck adapter per transformer layer, after the feed-forward block only (the placement AdapterFusion's
architecture search chose, with half of Houlsby's adapters), where AdapterHub's Pfeiffer configuration puts it
(``original_ln_before``, ``residual_before_ln``, ``original_ln_after``; :func:`._adapters.place_after_ffn`): with
h the FFN's output and x its residual input, the adapter reads the block's normalised output LN(h + x) and the
layer computes ``LN(h + x + W_up f(W_down LN(h + x)))`` (the same frozen LN, twice); in a pre-norm model
(no norm after the block) ``z + A(z)`` on the layer's output z = x + h. Not Houlsby's FFN position (which reads the
raw FFN output h before the residual). ReLU and reduction factor 16 by default (the paper's setting as AdapterHub
ships it). W_up = 0 at init, so the model starts as the base model. Only the adapters and the task head train:
L · (2dm + m + d) + head.
"""

from __future__ import annotations

from . import register
from ._adapters import AdapterMethod, BottleneckArgs
from .capabilities import Capabilities


@register("pfeiffer")
class Pfeiffer(AdapterMethod):
    summary = "Pfeiffer adapters (AdapterFusion 2021): one bottleneck after each FFN block's norm; W_up = 0 at init"
    revision = 2  # the adapter reads LN(h+x), AdapterHub's Pfeiffer placement (it read the raw FFN output)
    capabilities = Capabilities(targets="positions", v_role=False, quantized_base=True, merge=False,
                                export="efficientft")
    Args = BottleneckArgs
    after_ffn_block = True

    def positions(self) -> tuple[str, ...]:
        return ("ffn",)
