"""The hardware probe: what this machine computes natively (core; torch is imported only when asked)."""

from __future__ import annotations


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
