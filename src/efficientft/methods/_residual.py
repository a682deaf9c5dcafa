"""LoRA variants that start from a factorisation of W and train on the residual (PiSSA, OLoRA).

Their initialisation moves part of W into the adapter: W = W_res + s·B₀A₀, and the base model is modified to W_res.
A plain PEFT save of such a model is only usable on W_res, not on the original model. Here :meth:`export` converts
the trained adapter into an ordinary LoRA delta that applies to the *original* W (DESIGN.md, pitfalls):

    W_res + s·BA = W + s·(BA − B₀A₀) = W + s·[B | −B₀][A ; A₀]

(rank 2r, α doubled so the scale stays; PEFT's ``path_initial_model_for_weight_conversion`` does the algebra).
The initial adapter is kept in memory from :meth:`prepare`. PEFT's conversion keeps only ``lora_A``/``lora_B``
and drops the trained task head (``modules_to_save``) of a sequence classifier, so the head is put back
into the saved file afterwards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..models.roles import Target
from .base import Context
from .lora import LoraBacked

ADAPTER_FILE = "adapter_model.safetensors"


class ResidualLoRA(LoraBacked):
    """LoRA whose initialisation changes the base weights; exports a LoRA delta for the original model."""

    def prepare(self, model: nn.Module, targets: list[Target], ctx: Context) -> nn.Module:
        from peft.utils import get_peft_model_state_dict

        model = super().prepare(model, targets, ctx)
        # save_embedding_layers=False: no embeddings are adapted, and "auto" would look the model up on the hub
        state = get_peft_model_state_dict(model, save_embedding_layers=False)
        self.initial = {k: v.detach().clone().cpu().contiguous() for k, v in state.items()}
        return model

    def write_export(self, model: nn.Module, out_dir: Path) -> dict[str, Any]:
        """A PEFT LoRA adapter for the *original* base model (``PeftModel.from_pretrained(original, out_dir)``)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import load_file, save_file

        if getattr(self, "initial", None) is None:
            raise ConfigError(f"method {self.name!r} exports relative to its initial adapter; prepare() the model "
                              "with this method object first.")
        with tempfile.TemporaryDirectory(prefix="eft-initial-adapter-") as tmp:
            initial = Path(tmp) / "initial"
            initial.mkdir()
            save_file(self.initial, str(initial / ADAPTER_FILE), metadata={"format": "pt"})
            model.peft_config["default"].save_pretrained(str(initial))
            model.save_pretrained(str(out_dir), path_initial_model_for_weight_conversion=str(initial),
                                  save_embedding_layers=False)
        saved = load_file(str(out_dir / ADAPTER_FILE))
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items():
            if ".lora_A." not in k and ".lora_B." not in k:  # the head, which PEFT's conversion leaves out
                saved.setdefault(k, v.detach().cpu().contiguous())
        save_file(saved, str(out_dir / ADAPTER_FILE), metadata={"format": "pt"})
        return {"format": "peft-adapter", "converted_to": "lora"}

