"""Where and how a run computes: device, data-parallel accelerator, precision, load dtype, memory options.

:func:`build_runtime` decides all of it once per run, from the :class:`~efficientft.config.RunConfig` and the
process's launch environment (``WORLD_SIZE``), and the one :class:`Runtime` is passed to loading, training, the
optimizer step and evaluation. Nothing below it looks at the environment or keeps a module-level accelerator, so
two runs in one process (a sweep worker, a notebook) on different devices or precisions cannot see each other's.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .allocator import return_large_blocks
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARDED_LAUNCHES = ("FSDP", "DEEPSPEED")  # launches that shard the model (efficientft.sharding: FSDP2)


def sharding_requested(accelerator: Any) -> str | None:
    """The sharding a launch asked for: ``FSDP``, ``DEEPSPEED`` or None (plain data parallel).

    Read from the launch's environment (``accelerate launch`` sets ``ACCELERATE_USE_FSDP``) as well as from the
    accelerator, since accelerate on CPU silently falls back to plain data parallel.
    """
    for kind in SHARDED_LAUNCHES:
        if os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() == "true":
            return kind
    name = getattr(getattr(accelerator, "distributed_type", None), "name", "")
    return name if name in SHARDED_LAUNCHES else None


def check_launch(kind: str | None) -> None:
    """Refuse what this loop cannot shard: DeepSpeed, FSDP version 1 (FSDP2 keeps parameter names), and the
    accelerate config's CPU offload and activation checkpointing (not applied by this loop)."""
    if kind == "DEEPSPEED":
        raise ConfigError("DeepSpeed launches are not supported; for a model that does not fit one device use "
                          "FSDP (accelerate launch --config_file <efficientft>/fsdp_accelerate.yaml).")
    if kind == "FSDP" and os.environ.get("FSDP_VERSION", "2") != "2":
        raise ConfigError(f"FSDP version {os.environ['FSDP_VERSION']} is not supported; set fsdp_version: 2 in "
                          "the accelerate config (FSDP2, torch's fully_shard).")
    if kind == "FSDP":  # options of the accelerate config this loop would otherwise silently not apply
        for var, instead in (("FSDP_OFFLOAD_PARAMS", "drop fsdp_offload_params"),
                             ("FSDP_ACTIVATION_CHECKPOINTING", "use --gradient-checkpointing instead")):
            if os.environ.get(var, "").lower() == "true":
                raise ConfigError(f"the accelerate config's {var.lower()} is not supported here; {instead}.")


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one run.

    ``precision`` is resolved (never ``auto``). ``accelerator`` is the ``accelerate.Accelerator`` of a
    data-parallel launch, else None. ``load_dtype``: the dtype the backbone's weights load in (None: as the
    checkpoint / transformers load them). ``gradient_checkpointing``, ``quantize`` and ``quant_compute_dtype`` are
    carried from the config for the code that implements them. ``sharded``: an FSDP launch (the model is sharded
    across the processes before its optimizer is built; :mod:`efficientft.sharding`).
    """

    device: torch.device
    precision: str = "fp32"
    accelerator: Any = None
    load_dtype: torch.dtype | None = None
    gradient_checkpointing: bool = False
    quantize: str | None = None
    quant_compute_dtype: torch.dtype | None = None
    sharded: bool = False
    returns_large_blocks: bool = False  # CPU, quantized base: glibc maps blocks >= 1 MiB (allocator.return_large_blocks)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in; None under fp32 (no autocast)."""
        return None if self.precision == "fp32" else DTYPES[self.precision]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.precision == "fp16"

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, exports and writes the store (the only one, or rank 0)."""
        return self.accelerator is None or self.accelerator.is_main_process

    def autocast(self) -> AbstractContextManager:
        """The run's precision context for a forward pass."""
        dtype = self.autocast_dtype
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.needs_grad_scaler else None


def resolved_precision(cfg: RunConfig) -> str:
    from .hardware import best_precision

    return best_precision(cfg.device) if cfg.precision == "auto" else cfg.precision


def check_runtime(runtime: Runtime, cfg: RunConfig) -> None:
    """A runtime handed to :func:`~efficientft.train.prepare` must be the config's: the record stores the config,
    so a run computed otherwise would be stored under a config that did not compute it."""
    want = {"device": pick_device(cfg.device).type, "precision": resolved_precision(cfg),
            "gradient_checkpointing": cfg.gradient_checkpointing, "quantize": cfg.quantize}
    have = {"device": runtime.device.type, "precision": runtime.precision,
            "gradient_checkpointing": runtime.gradient_checkpointing, "quantize": runtime.quantize}
    for name, value in want.items():
        if have[name] != value:
            raise ConfigError(f"the runtime's {name} is {have[name]!r} but the config's is {value!r}; build the "
                              f"runtime from the config (build_runtime(cfg)).")


def check_shards(examples: int, batch_size: int, processes: int) -> None:
    """Every process of a data-parallel launch needs at least one example of every batch it is handed.

    A global batch is split between the processes (``tensor_split``); the short last batch of an epoch (``examples``
    modulo ``batch_size``) with fewer examples than processes would leave some of them an empty batch, on which
    the model's forward fails mid-run. ``batch_size`` being a multiple of the processes is checked when the runtime
    is built; the training set's size is known only once it is encoded, so this runs then, before training.
    """
    last = (examples % batch_size or batch_size) if examples >= batch_size else examples
    if processes > 1 and last < processes:
        fix = f" (e.g. --max-train {examples - last})" if examples - last >= processes else ""
        raise ConfigError(f"the {examples} training example(s) leave a last batch of {last} in every epoch, fewer "
                          f"than the {processes} data-parallel processes (each needs at least one example of every "
                          f"batch); use a training set whose size is a multiple of batch_size {batch_size} or leaves "
                          f"at least {processes} over{fix}, or fewer processes.")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto.")
    return torch.device(name)


def build_runtime(cfg: RunConfig, world_size: int | None = None) -> Runtime:
    """The runtime of ``cfg`` in this process; ``world_size`` defaults to the launcher's ``WORLD_SIZE``.

    A data-parallel launch (``WORLD_SIZE`` > 1): launch one run on N processes with ``torchrun --nproc_per_node N
    -m efficientft.cli run ...`` (CPU, gloo) or ``accelerate launch --multi_gpu --num_processes N -m
    efficientft.cli run ...`` (GPUs). Every process builds the same model from the same seed and trains on its 1/N
    slice of every global batch; DDP averages the gradients, so each optimizer step is the step on the whole batch
    (``batch_size`` is the global batch). Only the main process evaluates and writes the store. The run's key is
    the single-process key. An FSDP launch (``accelerate launch --config_file <efficientft>/fsdp_accelerate.yaml
    ...``) is the same, with the model sharded across the processes (:mod:`efficientft.sharding`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    device = pick_device(cfg.device)
    accelerator = None
    sharded = False
    if world > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        kind = sharding_requested(accelerator)
        check_launch(kind)
        sharded = kind == "FSDP"
        if cfg.checkpoint_every:  # the default (None) and 0 are off here; an explicit request is not ignored
            raise ConfigError(f"--checkpoint-every is not supported in a {accelerator.num_processes}-process "
                              "launch (step checkpoints are single-process only); drop it, or run in one process.")
        device = accelerator.device
        if cfg.batch_size % accelerator.num_processes:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {accelerator.num_processes} "
                              f"data-parallel processes (it is the global batch, split evenly between them).")
    precision = resolved_precision(cfg)
    compute = DTYPES[cfg.quant_compute_dtype] if cfg.quant_compute_dtype else None
    # Before the model loads: a quantized base's per-matmul dequantized weights would otherwise stay resident in
    # glibc's heaps after they are freed (+24-38 % RSS at 0.3-0.6 B parameters, BENCHMARKS.md §7).
    returns = device.type == "cpu" and cfg.quantize is not None and return_large_blocks()
    return Runtime(device=device, precision=precision, accelerator=accelerator,
                   gradient_checkpointing=cfg.gradient_checkpointing, quantize=cfg.quantize,
                   quant_compute_dtype=compute, sharded=sharded, returns_large_blocks=returns)
