"""NeuroAda (Zhang, Shen, Cao & Shutova, "NeuroAda: Activating Each Neuron's Potential for Parameter-Efficient
Fine-Tuning", EMNLP 2025, arXiv 2510.18940; reference code github.com/FightingFighting/NeuroAda, ``utils/select_para.py``
``select_perCell`` and ``utils/utils.py`` ``update_model`` / ``merge_model``, its ``perCell_mag_add`` type).

Every neuron (every output row i of a targeted weight W ∈ R^{d_out×d_in}) gets bypass connections on its k input
connections of largest pretrained magnitude, the base frozen (the paper's sparse additive adaptation)::

    W' = W + Δ,   Δ_ij = δ_ij for j ∈ top-k_j |W_ij| (row i), 0 elsewhere;   δ = 0 at initialisation

The selection is made once, offline, from the pretrained weights alone (no data: the reference's
``torch.topk(abs(W), k, dim=1)`` on each ``nn.Linear`` weight, rows = output neurons), so every neuron, not only a
few important ones, is adapted. k is ``top_k`` (the reference's ``--times_num``, default 1: the paper's ≤ 0.02%
setting; its scripts also use 20); a k above d_in takes every input, as the reference's clamp does. Trainable
parameters: d_out · k per targeted weight (+ the task head); biases stay frozen (the reference's ``tuneBias`` is off).
The deltas are their own tensor of d_out · k values, added to W in the forward pass (the reference's
``scatter_add`` of ``weight_new`` into the flattened weight), so the pretrained weights never move and the optimizer
holds only the deltas; merge scatter-adds them into W (the reference's ``merge_model``), a plain model again.

Targets: the paper and its scripts adapt every linear layer of LLaMA (q, k, v, o, gate, up, down): here the run's
``targets`` (default ``qv``, as for every method; ``--targets all-linear`` is the paper's setting). On GPT-2's
fused ``c_attn`` each role's rows get their deltas under ``sparse.<role>``, chosen within those rows (Conv1D's weight
is read as (out, in), its neurons its output columns), so λ applies to W_v's deltas. The sparse increments are the
shared machinery of ``methods/_sparse.py`` (SIFT's too): only the selection differs (per row by |W| here, over the
whole weight by |∂L/∂W| there). The chosen entries are method state (resume) and part of the export.

Capabilities: linear modules and fused slices; W_v's deltas carry λ; merge; our export format; no quantized base
(the deltas are added to the dense W, which a 4/8-bit layer does not hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..models.fused import out_major_weight
from ..models.roles import Target
from . import register
from ._sparse import SparseIncrements
from .args import POSITIVE_INT, MethodArgs, arg
from .capabilities import Capabilities


@dataclass
class NeuroAdaArgs(MethodArgs):
    top_k: int = arg(1, POSITIVE_INT, note="the paper uses 1 or 20")  # input connections tuned per neuron (per output row)


@register("neuroada")
class NeuroAda(SparseIncrements):
    summary = ("NeuroAda (Zhang et al. 2025): zero-initialised bypass deltas on each neuron's top-k input connections "
               "by pretrained |W| (top_k, default 1)")
    Args = NeuroAdaArgs
    capabilities = Capabilities(
        fused_slices=True, merge=True, export="efficientft", quantized_base=False,
        quantized_base_reason="it adds its deltas to the dense base weight W, which a 4/8-bit layer does not hold",
    )
    lr_prior = (3e-4, 3e-2)  # the reference's scripts: 7e-4 (k = 20) .. 9e-3 (k = 1)
    args_hint = "another top_k"

    def count(self, rows: int, d_in: int) -> int:
        return rows * min(self.args.top_k, d_in)

    def wrap(self, base: nn.Module, targets: list[Target]) -> nn.Module:
        """The wrapper, with each row's top-k entries by pretrained |W| chosen at once (no data needed)."""
        delta = super().wrap(base, targets)
        delta.choose(out_major_weight(base).detach().abs(), per_row=True)
        return delta
