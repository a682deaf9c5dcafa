"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``): full fine-tuning of a model that
does not fit one device, launched with ``accelerate launch --config_file <efficientft>/fsdp_accelerate.yaml``.

Each process loads the model, the method injects its adapters or marks its trainable weights, and then every
transformer block (the classes the architecture lists in ``_no_split_modules``, as accelerate's transformer-based
wrap policy reads them) and the root are sharded across the processes: each keeps 1/N of every parameter, its
gradient and its AdamW moments, and all-gathers a block's weights only while the block computes. The optimizer is
built *after* sharding, from the sharded parameters, which FSDP requires (an optimizer built before would hold
the unsharded tensors, which no longer train). FSDP2 keeps every parameter's name (now a ``DTensor`` shard), so the
method's param groups and the λ strategy, which select parameters by module name and role, are those of an
unsharded run; gradients are averaged over processes (reduce-scatter), as DDP does, so the loss curve is the
single-process curve.

The sharding is ours (torch's ``fully_shard``) rather than accelerate's ``prepare``: accelerate runs FSDP on GPUs
only (on CPU it falls back to plain data parallel), and one code path on both lets the CPU test cover the code a
GPU run takes (not run on a GPU here: none was lent). What is refused, each with one line before loading:
DeepSpeed, FSDP version 1, the accelerate config's CPU offload and activation checkpointing (use
``--gradient-checkpointing``), fp16 (the GradScaler is not shard-aware), ``--quantize``, methods not declared to
work sharded (``capabilities.sharding``: full, lora), the feature cache, step checkpoints and ``--export-dir`` (both
would need a gathered full state dict). The launch itself is read and checked where the runtime is built
(:func:`efficientft.runtime.sharding_requested`, :func:`efficientft.runtime.check_launch`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig
    from .runtime import Runtime

CONFIG = Path(__file__).parent / "fsdp_accelerate.yaml"  # the shipped accelerate launch config


def check_config(cfg: RunConfig, method: Any, precision: str) -> None:
    """Everything a sharded run cannot do, refused with one line before the model loads."""
    if not method.capabilities.sharding:
        from .methods import METHODS

        able = sorted(n for n in METHODS.names() if METHODS.get(n).capabilities.sharding)
        raise ConfigError(f"method {cfg.method!r} has not been made to run under FSDP. Methods that can: "
                          f"{', '.join(able)}; or launch without FSDP.")
    refused = [(precision == "fp16", "--precision fp16 (the GradScaler is not shard-aware; use bf16)"),
               (cfg.quantize is not None, "--quantize (a quantized base is frozen: use LoRA without FSDP)"),
               (cfg.feature_cache, "--feature-cache"),
               (bool(cfg.export_dir), "--export-dir (it would need the full weights gathered)")]
    for bad, what in refused:
        if bad:
            raise ConfigError(f"{what} is not supported under FSDP.")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks to shard one by one: modules of the classes the architecture declares it must not
    split (``_no_split_modules``, the list accelerate's transformer-based wrap policy reads)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Shard ``model`` in place across the launch's processes (every block, then the root); returns it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(runtime.device.type, (runtime.num_processes,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    for block in blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model


def describe(model: nn.Module, runtime: Runtime) -> dict[str, Any]:
    """What was sharded, for the run's record: the blocks, and this process's share of the parameters."""
    from torch.distributed.fsdp import FSDPModule

    local = sum(q.to_local().numel() if hasattr(q, "to_local") else q.numel() for q in model.parameters())
    units = sum(isinstance(m, FSDPModule) for m in model.modules())
    return {"kind": "fsdp2", "processes": runtime.num_processes, "units": units,
            "params_per_process": local, "params": sum(q.numel() for q in model.parameters())}
