"""EVA (Paischer et al. 2024, "One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation",
arXiv 2410.07170).

A data-driven LoRA initialisation: A of each adapted layer is set to the top right-singular vectors of that layer's
inputs on training data (the directions of largest activation variance), B = 0, so the model still computes W at
init. PEFT computes them with an incremental PCA (so of the mean-centred inputs, padding excluded) over batches
until the components settle (cosine similarity ≥ ``tau`` between successive estimates), and redistributes the rank
budget across layers by explained variance: each layer may get up to ``round(rho·r)`` components (``rho = 1``:
every layer keeps rank r), the total staying n·r.

PEFT's ``init_lora_weights="eva"`` alone only zeroes B (and leaves A random): the SVD happens in
:meth:`init_from_data`, which the loop calls once before the optimizer exists (DESIGN.md, pitfalls). It takes
``init_batches`` training batches. Labels are dropped from them: PEFT's EVA masks tokens with the labels of a
language model (``labels == -100``), which is meaningless for (and breaks on) a classifier's one label per sequence;
padding is still excluded through the attention mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..schema import Rule
from . import register
from .args import BOOL, POSITIVE_INT, arg
from .capabilities import Capabilities
from .lora import LoraArgs, LoraBacked

MAX_PASSES = 100  # forward passes over the init batches before EVA is declared not to converge


@dataclass
class EvaArgs(LoraArgs):
    init_batches: int = arg(8, POSITIVE_INT)  # training batches whose layer inputs are decomposed
    rho: float = arg(2.0, Rule("float", 1, 1e3, high_open=True))  # a layer may receive up to rho·r components (1: no redistribution)
    tau: float = arg(0.99, Rule("float", 0, 1, low_open=True))  # convergence: cosine similarity of successive component estimates
    whiten: bool = arg(False, BOOL)  # scale A's rows by 1/√(singular value)


@register("eva")
class EVA(LoraBacked):
    summary = "EVA (Paischer et al. 2024): LoRA with A from the SVD of each layer's input activations, via PEFT"
    capabilities = Capabilities(rank=True, quantized_base=True, merge=True, export="peft")
    Args = EvaArgs

    @property
    def max_rank(self) -> int:
        return round(self.args.rank * self.args.rho)

    def rank_note(self) -> str:
        return (f"EVA may give one layer up to round(rho·rank) = round({self.args.rho}·{self.args.rank}) components; "
                "lower rank or rho.")

    def peft_kwargs(self) -> dict[str, Any]:
        from peft import EvaConfig

        config = EvaConfig(rho=float(self.args.rho), tau=float(self.args.tau), whiten=self.args.whiten,
                           use_label_mask=False)
        return {"init_lora_weights": "eva", "eva_config": config}

    def init_from_data(self, model: nn.Module, batches: Iterable[dict]) -> None:
        from peft import initialize_lora_eva_weights
        from peft.tuners.lora import LoraLayer

        self.adapted = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]  # before: rank 0 removes
        data = [{k: v for k, v in b.items() if k != "labels"} for b in itertools.islice(batches, self.args.init_batches)]
        if not data:
            raise ConfigError("method 'eva' needs training batches for its initialisation; none came.")
        calls = 0

        def forward(m: nn.Module, inputs: dict) -> Any:
            nonlocal calls
            calls += 1
            if calls > MAX_PASSES * len(data):
                raise ConfigError(
                    f"EVA's SVD did not converge in {MAX_PASSES} passes over {len(data)} batch(es) (tau "
                    f"{self.args.tau}); give more init_batches (more tokens than rho·rank per batch) or a lower tau."
                )
            return m(**inputs)

        initialize_lora_eva_weights(model, dataloader=data, forward_fn=forward, show_progress_bar=False)

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """EVA's initialisation as PEFT's ``eva_state_dict``: each adapted layer's A (its rank may differ from r
        after the redistribution; rank 0: the adapter was removed), so a resumed run rebuilds the same layers
        without redoing the SVD."""
        from peft.tuners.lora import LoraLayer

        lora = {n: m.lora_A["default"].weight for n, m in model.named_modules() if isinstance(m, LoraLayer)}
        removed = [n for n in getattr(self, "adapted", []) if n not in lora]
        return {"eva_state_dict": lora, "removed": removed}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        import torch
        from peft import initialize_lora_eva_weights

        self.adapted = [*state["eva_state_dict"], *state["removed"]]  # for this run's next checkpoints
        eva = dict(state["eva_state_dict"])
        eva.update({n: torch.zeros(0, 1) for n in state["removed"]})
        initialize_lora_eva_weights(model, eva_state_dict=eva, show_progress_bar=False)
