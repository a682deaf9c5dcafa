"""How a classifier reads the encoder (the run setting ``head``), declared once per architecture.

transformers' sequence classifiers read the encoder in their own way: BERT the [CLS] token through its pooler
(dense + tanh, pre-trained by next-sentence prediction; only ``classifier`` is a head module, so the pooler stays
frozen), RoBERTa through its own classification head (dense + tanh + out_proj, all trained), LLaMA and GPT-2 the
last real token through ``score``. A sentence-transformers encoder such as the bundled all-MiniLM-L6-v2 was trained
to be read by the masked mean of its last hidden states instead (its ``1_Pooling/config.json``), and its pooler is
left over from pre-training. The heads a run may choose:

- ``cls-pooler``: [CLS] → pooler (frozen) → dropout → classifier: transformers' BERT head;
- ``cls-pooler-trained``: the same, the pooler training as part of the head (a head module, counted, exported);
- ``mean``: the mean of the last hidden states over real tokens (the attention mask) → dropout → classifier; the
  pooler is replaced by :class:`MaskedMeanPooler`, which has no parameters;
- ``model``: the architecture's own transformers head (RoBERTa's, LLaMA's and GPT-2's last-token ``score``...);
- ``auto``: the architecture's default from :data:`AUTO` (a checkpoint that records its head, e.g. an export of
  this toolkit, keeps it).

The model stays a transformers class (the pooler slot is swapped, nothing is wrapped), so PEFT, merging, export,
the feature cache and FLOPs see the model they always saw. The head a model was built with is recorded in its
config (:data:`CONFIG_KEY`), which is how :func:`~efficientft.models.roles.head_modules` knows a trained pooler and
how an exported model folder is read back with the same head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..vocab import HEADS

CONFIG_KEY = "eft_head"  # the model config's record of its head (saved in config.json with an exported model)
SENTENCE_ENCODER = "sentence-transformers"  # a BERT-family checkpoint folder that sentence-transformers reads
# model types whose transformers classifier reads [CLS] through ``<base>.pooler`` (the heads that replace or train it)
POOLER_TYPES = frozenset({"bert", "ernie"})

# auto's choice per architecture: THE one place to change a default (issue 25 §1: the measurement deciding the
# sentence-transformers entry, frozen pooler vs trained pooler vs mean on MiniLM, is in docs/).
AUTO = {
    SENTENCE_ENCODER: "mean",  # all-MiniLM-L6-v2 and other sentence-transformers BERT encoders
    "bert": "cls-pooler",
    "ernie": "cls-pooler",
}
DEFAULT = "model"  # every other architecture: its own transformers head (RoBERTa's, the last-token ``score``)


def accepted(model_type: str | None) -> tuple[str, ...]:
    """The heads a model of ``model_type`` can be read through (``auto`` aside)."""
    if model_type in POOLER_TYPES:
        return "cls-pooler", "cls-pooler-trained", "mean", "model"
    return ("model",)


def checkpoint_facts(config: dict[str, Any], folder: Path | None) -> tuple[str | None, str | None]:
    """What auto needs from a checkpoint: its ``model_type`` key in :data:`AUTO` (:data:`SENTENCE_ENCODER` for a
    sentence-transformers folder of a pooler architecture) and the head it records (an export's), if any."""
    model_type = config.get("model_type")
    if model_type in POOLER_TYPES and folder is not None and is_sentence_encoder(folder):
        model_type = SENTENCE_ENCODER
    return model_type, config.get(CONFIG_KEY)


def is_sentence_encoder(folder: Path) -> bool:
    """A sentence-transformers model folder: its module list, pooling config or sentence-BERT config is there."""
    return any((folder / f).is_file() for f in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"))


def choose(requested: str, model_type: str | None, recorded: str | None = None, model: str = "") -> str:
    """The head a run uses: ``requested`` checked against the architecture, or auto's choice (the head the
    checkpoint records, else :data:`AUTO`'s entry). ``model`` (its name) is for the message. ``model`` on a
    pooler architecture is its transformers head, spelled ``cls-pooler`` (one spelling, one key)."""
    arch = "bert" if model_type == SENTENCE_ENCODER else model_type
    if requested == "auto":
        head = recorded if recorded in HEADS and recorded != "auto" else AUTO.get(model_type or "", DEFAULT)
    else:
        head = requested
    ok = accepted(arch)
    if head not in ok:
        what = f"model {model!r} ({arch or 'unknown type'})" if model else f"a {arch or 'model of unknown type'} model"
        reason = ("it has no pooler to train or replace; its classifier is its own transformers head"
                  if arch not in POOLER_TYPES else "")
        raise ConfigError(f"head {head!r} does not fit {what}{': ' + reason if reason else ''}; accepted: "
                          f"auto, {', '.join(ok)}.", field="head")
    return "cls-pooler" if head == "model" and arch in POOLER_TYPES else head


def local_folder(path: str | None) -> Path | None:
    """The folder holding the model's files: a local folder, or a hub model's snapshot in the Hugging Face cache."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(str(path), "config.json")
    except Exception:  # not a hub id either (an absent local path): the loader names the problem
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def apply_head(model: nn.Module, head: str) -> nn.Module:
    """Build ``head`` on a loaded transformers classifier (in place): record it in the config (:data:`CONFIG_KEY`)
    and, for ``mean``, put a :class:`MaskedMeanPooler` in the pooler's place."""
    model.config.update({CONFIG_KEY: head})
    if head == "mean":
        base = getattr(model, model.base_model_prefix)
        base.pooler = MaskedMeanPooler()
        base.register_forward_pre_hook(base.pooler.take_mask, with_kwargs=True)
    return model


def trained_pooler(model: nn.Module) -> str | None:
    """The pooler's trained module when the model's head trains it (``cls-pooler-trained``), else None: its
    ``dense`` layer, which holds all its parameters (PEFT's merge of some tuners, BOFT's, unwraps a trained head
    module as a layer with a ``weight``)."""
    config = getattr(model, "config", None)
    if getattr(config, CONFIG_KEY, None) != "cls-pooler-trained":
        return None
    return f"{model.base_model_prefix}.pooler.dense"


def export_note(model: nn.Module, out_dir: Path) -> dict[str, Any]:
    """Flag, in the export's README.md, a head plain transformers does not build: a ``mean`` model loaded with
    ``AutoModelForSequenceClassification`` reads [CLS] through a pooler instead (missing from the weights, so it is
    initialised at random) and computes another function. EfficientFT reads the head back from the export (a model
    folder's config.json records it; an adapter is applied to a base loaded with the run's ``head``). Returns what
    the run's record says of the head (nothing for the heads plain transformers builds)."""
    if not any(isinstance(m, MaskedMeanPooler) for m in model.modules()):
        return {}
    readme = out_dir / "README.md"
    old = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    readme.write_text(old + MEAN_NOTE, encoding="utf-8")
    return {"head": "mean", "plain_transformers": "computes another function (see README.md)"}


MEAN_NOTE = """
## Classifier head: mean (EfficientFT)

This classifier reads the **masked mean of the last hidden states** over the real tokens (EfficientFT's `head:
mean`), not the [CLS] token through BERT's pooler. Plain `transformers` (`AutoModelForSequenceClassification`,
with or without `peft`) builds the [CLS]-pooler head instead and computes **another function** (its pooler is not
in these weights and is initialised at random). Load it with EfficientFT: a model folder with `eft run --model DIR`
or `efficientft.models.load_model(DIR, num_labels, readout="auto")` (its config.json records `eft_head: mean`); an
adapter on a base loaded with `load_model(BASE, num_labels, readout="mean")`.
"""


class MaskedMeanPooler(nn.Module):
    """The mean of the last hidden states over the real tokens (attention mask 1), in the pooler's place.

    BERT calls its pooler with the hidden states alone, so the mask is taken from the encoder's own call by a
    forward pre-hook (:meth:`take_mask`); without a mask every position is real."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def take_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden.mean(dim=1)
        m = self.mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


__all__ = ["AUTO", "CONFIG_KEY", "DEFAULT", "MaskedMeanPooler", "accepted", "apply_head",
           "choose", "export_note", "local_folder", "trained_pooler"]
