"""The resolved configuration of one run: a typed dataclass, validated on construction, YAML in and out.

Every field that changes a result is part of the run's identity (:meth:`RunConfig.key`); fields that only say
where things live or how to show progress (``ENVIRONMENT_FIELDS``) are not, so the same experiment has the same key
on every machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean
from .textfile import read_text
from .yaml_limits import load_bounded

DEFAULT_MODEL = "minilm"
DEFAULT_EPOCHS = 3.0
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 where the hardware computes it natively, else fp32
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCES = ("local", "hub")

# Fields that say where things are or how to display them; they do not change a result and are not in the key.
ENVIRONMENT_FIELDS = frozenset({"data_dir", "device", "progress", "export_dir", "overwrite", "trust_remote_code"})
# Options added after runs were stored, whose default computes what runs computed before the option existed: they
# are in the key only when set, so that adding them changed no earlier run's key.
KEY_WHEN_SET = {"bucket": False, "feature_cache": False,
                "gradient_checkpointing": False, "quantize": None, "quant_compute_dtype": None}
QUANTIZE = ("4bit", "8bit")  # bitsandbytes: NF4 with double quantisation, or LLM.int8()
QUANT_COMPUTE_DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class RunConfig:
    """Everything that defines one fine-tuning run.

    ``lr_ratio`` is λ of arXiv 2410.02247: the learning rate of W_v's trainable parameters is ``lr_ratio * lr``
    while W_q/W_k keep ``lr``. ``role_lr`` generalises it to any role (``{"v": 4, "o": 2}``); when both are
    given they must agree on ``v``.
    """

    # what is trained
    task: str = "sst2"
    method: str = "lora"
    model: str = DEFAULT_MODEL
    targets: str = "qv"
    lr_ratio: float = 1.0
    role_lr: dict[str, float] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_ratio: float = 0.06
    epochs: float | None = None
    steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    max_length: int = 128
    seed: int = 0
    # data and evaluation
    data_source: str = "local"
    custom: dict[str, Any] | None = None
    max_train: int | None = None
    max_eval: int | None = None
    data_seed: int = 0
    selection_size: float = 0.0
    eval_every: int = 0
    eval_batch_size: int = 64
    # speed options that change what is computed (so they are part of the key)
    bucket: bool = False  # draw training batches from length buckets (less padding; batches differ)
    feature_cache: bool = False  # skip frozen lower layers via cached features (they then run without dropout)
    # large models: memory and time are results, so these are in the key (only when set: earlier keys unchanged)
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (non-reentrant)
    quantize: str | None = None  # "4bit" (NF4, double quantisation) or "8bit": the frozen base via bitsandbytes
    quant_compute_dtype: str | None = None  # dtype 4-bit layers compute in; None: bf16 where supported, else fp32
    # environment (not part of the run's identity)
    data_dir: str | None = None
    device: str = "auto"
    progress: bool = True
    export_dir: str | None = None
    overwrite: bool = False  # empty a non-empty export_dir before exporting (otherwise: refused before training)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        for name in _FLOATS | _INTS:  # 4 and 4.0 must give the same key
            setattr(self, name, _coerce(name, getattr(self, name), "config"))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def positive(name: str, allow_none: bool = False, integer: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            if integer:
                ok = ok and float(v).is_integer()
            if not ok:
                kind = "a positive integer" if integer else "a positive number"
                raise ConfigError(f"{name} must be {kind}, got {v!r}.")

        for name in ("lr", "lr_ratio"):
            positive(name)
        for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size"):
            positive(name, integer=True)
        positive("epochs", allow_none=True)
        for name in ("steps", "max_train", "max_eval"):
            positive(name, allow_none=True, integer=True)
        positive("max_grad_norm", allow_none=True)
        if self.epochs is not None and self.steps is not None:
            raise ConfigError("give either epochs or steps, not both.")
        for name, choices in (("schedule", SCHEDULES), ("precision", PRECISIONS), ("device", DEVICES),
                              ("data_source", DATA_SOURCES)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is not known.{did_you_mean(getattr(self, name), choices)} "
                    f"Accepted: {', '.join(choices)}."
                )
        if not (0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0: evaluate at the end only), got {self.eval_every!r}.")
        if self.selection_size < 0:
            raise ConfigError(f"selection_size must be >= 0, got {self.selection_size!r}.")
        if not isinstance(self.role_lr, dict):
            raise ConfigError(f"role_lr must be a mapping of role to ratio, e.g. {{v: 4}}; got {self.role_lr!r}.")
        from .models.roles import ROLES

        for role in self.role_lr:
            if role not in ROLES:
                raise ConfigError(
                    f"role_lr names an unknown role {role!r}.{did_you_mean(role, ROLES)} Roles: {', '.join(ROLES)}."
                )
        for role, ratio in self.role_lr.items():
            if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0 or not math.isfinite(ratio):
                raise ConfigError(f"role_lr[{role!r}] must be a positive number, got {ratio!r}.")
        if "v" in self.role_lr and self.lr_ratio != 1.0 and float(self.role_lr["v"]) != float(self.lr_ratio):
            raise ConfigError(f"lr_ratio={self.lr_ratio} and role_lr.v={self.role_lr['v']} disagree; give one of them.")
        for name, choices in (("quantize", QUANTIZE), ("quant_compute_dtype", QUANT_COMPUTE_DTYPES)):
            v = getattr(self, name)
            if v is not None and v not in choices:
                raise ConfigError(f"{name} {v!r} is not known.{did_you_mean(str(v), choices)} "
                                  f"Accepted: {', '.join(choices)}.")
        if self.quant_compute_dtype is not None and self.quantize != "4bit":
            raise ConfigError(f"quant_compute_dtype is the compute dtype of 4-bit layers; it needs quantize 4bit, "
                              f"got quantize {self.quantize!r}.")
        for name in ("bucket", "feature_cache", "overwrite", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if not isinstance(self.method_args, dict):
            raise ConfigError(f"method_args must be a mapping, got {self.method_args!r}.")
        if self.custom is not None:
            from .tasks.custom import (
                check_spec,  # keys, types, labels and metrics: before any key is computed
            )

            check_spec(self.custom)

    # ------------------------------------------------------------------ derived values
    @property
    def role_ratios(self) -> dict[str, float]:
        """Per-role learning-rate multipliers: ``role_lr`` with ``v`` set to λ."""
        ratios = {str(k): float(v) for k, v in self.role_lr.items()}
        if self.lr_ratio != 1.0 or "v" not in ratios:
            ratios["v"] = float(self.lr_ratio)
        return ratios

    def resolved(self) -> RunConfig:
        """The config with every default made explicit (the method's arguments, the training length).

        Two configs that mean the same experiment resolve to the same thing, and so get the same key.
        """
        from .methods import get_method
        from .models.large import check_quantized_method

        method = get_method(self.method).from_config(self.method_args)
        check_quantized_method(method, self.quantize)  # a suite that asks it fails at expansion, before any run
        changes: dict[str, Any] = {"method": method.name, "method_args": method.args_dict()}
        if self.epochs is None and self.steps is None:
            changes["epochs"] = DEFAULT_EPOCHS
        if self.precision == "auto":  # resolved before hashing: the key names the precision that ran
            changes["precision"] = best_precision(self.device)
        if self.quantize == "4bit" and self.quant_compute_dtype is None:  # the key names the dtype that ran
            changes["quant_compute_dtype"] = best_precision(self.device)
        return self.replace(**changes)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (everything but where things live and how they are shown)."""
        d = self.to_dict()
        for name in ENVIRONMENT_FIELDS:
            d.pop(name, None)
        for name, default in KEY_WHEN_SET.items():
            if d.get(name) == default:
                d.pop(name)
        return d

    def key(self) -> str:
        """A stable hash of the resolved :meth:`identity`: the run's key in the results store."""
        blob = json.dumps(self.resolved().identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping of field: value, got {type(d).__name__}.")
        names = cls.field_names()
        unknown = [k for k in d if k not in names]
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"{where}: unknown field {k!r}.{did_you_mean(k, names)} Known fields: {', '.join(names)}."
            )
        return cls(**{k: _coerce(k, v, where) for k, v in d.items()})  # a type error names the file

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(load_yaml(path), where=str(path))


_FLOATS = {"lr", "lr_ratio", "weight_decay", "warmup_ratio", "epochs", "max_grad_norm", "selection_size"}
_BOOLS = {"bucket", "feature_cache", "overwrite", "gradient_checkpointing"}
_INTS = {"steps", "batch_size", "grad_accum", "max_length", "seed", "max_train", "max_eval", "data_seed",
         "eval_every", "eval_batch_size"}


def _coerce(name: str, value: Any, where: str) -> Any:
    """YAML and the command line give strings and ints where floats are meant; convert with a clear error."""
    if value is None:
        return None
    if name in _BOOLS and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    try:
        if name in _FLOATS and not isinstance(value, bool):
            return float(value)
        if name in _INTS and not isinstance(value, bool):
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
    except (TypeError, ValueError):
        kind = "a number" if name in _FLOATS else "an integer"
        raise ConfigError(f"{where}: {name} must be {kind}, got {value!r}.") from None
    return value


def best_precision(device: str = "auto") -> str:
    """``bf16`` where the device computes in bf16 natively (a CUDA GPU that supports it, or a CPU with AVX-512
    BF16 or AMX instructions), else ``fp32``."""
    import torch

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "fp32"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; a syntax error names the file, line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist.")
    loader = yaml.SafeLoader(read_text(p, "config file"))  # not UTF-8: one line, not a traceback
    try:
        return load_bounded(loader, str(p))  # aliases that expand without bound are refused, not walked
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{at}: {getattr(e, 'problem', e)}.") from None
    finally:
        loader.dispose()
