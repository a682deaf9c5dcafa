"""Model FLOPs and model FLOPs utilisation (MFU): the work a run's model *needed*, over what the device could do.

**Model FLOPs** are counted from the model's shape and the tokens trained, not from the kernels that ran, so that
rematerialisation (gradient checkpointing), padding and slow kernels lower MFU instead of raising the count
(Chowdhery et al. 2022, PaLM, appendix B). A matmul with a weight of N entries costs 2·N FLOPs per token forward
(a multiply and an add); its backward costs 2·N for the gradient with respect to its input (the *activation
gradient*) and 2·N for the gradient with respect to its weight (Kaplan et al. 2020, §2.1: C ≈ 6·N per token).
With N_f frozen and N_t trainable matmul parameters, per token:

- forward: 2·(N_f + N_t)
- activation gradients: 2·(N_f + N_t) (a frozen weight still passes the gradient on to the layers below it; the
  count assumes it flows through every layer, as it does when the lowest layer is adapted)
- weight gradients: 2·N_t (a frozen weight has none)

so **4·N_f + 6·N_t**, which is Kaplan's **6·N** for full fine-tuning (N_f = 0) and about 4·N for an adapter whose
own parameters are few (its forward and activation gradients are in N_t's 6). The attention scores and their
weighted sum have no weights: PaLM adds **12·L·d·T** per token for them (forward 4·L·d·T: Q·Kᵀ and A·V, 2·d·T
each per layer; backward twice that), with L layers, d the attention width (heads × head size) and T the sequence
length. We add it too, with T each example's own length (non-padding tokens), so the term sums 12·L·d·T_i² over
examples; like PaLM we do not halve it for a causal mask. N excludes the input embedding tables (a lookup, not a
matmul) but keeps an output projection tied to them (GPT-2's ``lm_head``). Tokens are the non-padding tokens
trained on, so padding is counted as waste. Element-wise work (norms, activations, the optimizer) is not counted.

A method that trains from forward passes only declares it (``capabilities.forward_passes`` and ``backward``):
MeZO's SPSA step evaluates the loss twice and runs no backward, so it costs 2 × (2·N + 4·L·d·T) per token.

**Peak** FLOPs per second: a table of vendor dense (no sparsity) tensor-core figures for GPUs by name, in the
precision the matmuls run in (bf16/fp16 autocast; fp32, or TF32 when ``torch.backends`` allows it); on a CPU a
peak measured once by a matmul probe (:func:`probe_cpu_peak`) and cached per CPU model, thread count and dtype in
``<cache dir>/cpu_peak.json``. **MFU** = model FLOPs / (peak × the seconds the optimizer steps took). An unknown
GPU has no peak: its MFU is None.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .provenance import cpu_name

# Dense peak TFLOP/s by (GPU name pattern, precision) from the vendors' data sheets (sparsity figures halved):
# H100 SXM / H200: NVIDIA H100 and H200 Tensor Core GPU data sheets; H100 PCIe, H100 NVL: the H100 data sheet;
# A100: NVIDIA A100 data sheet (SXM and PCIe alike); L4, L40, L40S, A10, V100, T4: their data sheets.
# ``tf32`` is fp32 matmuls on tensor cores (allowed by torch.backends.cuda.matmul.allow_tf32), ``fp32`` without.
# Patterns are tried in order: a more specific name first (``H100 PCIe`` before ``H100``).
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 (the "80GB HBM3" name)
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 tensor cores, no TF32
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
)
PROBE_SECONDS = 0.4  # how long the CPU probe multiplies (with its warm-up, well under 2 s)
PROBE_SIZE = 512


def _embedding_weights(model: nn.Module) -> set[int]:
    """ids of input embedding tables that no linear layer also uses (a tied ``lm_head`` is a matmul)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used = {id(getattr(m, "weight", None)) for m in model.modules() if not isinstance(m, nn.Embedding)}
    return emb - used


@dataclass(frozen=True)
class FlopShape:
    """What model FLOPs depend on: frozen and trainable matmul parameters, layers and attention width (for a method
    that grows, the parameter counts are the run's token-weighted means over its steps)."""

    frozen: int
    trainable: int
    layers: int
    attn_width: int

    def per_token(self, forward_passes: int = 1, backward: bool = True) -> float:
        """FLOPs per token of the parameter matmuls (see the module docstring), without the attention term."""
        n = self.frozen + self.trainable
        if backward:
            return forward_passes * 2 * n + 2 * n + 2 * self.trainable
        return forward_passes * 2.0 * n

    def attention(self, token_pairs: int, forward_passes: int = 1, backward: bool = True) -> float:
        """PaLM's attention term over ``token_pairs`` = Σ_i T_i² (each token attends to its example's T_i)."""
        per = 4 * forward_passes + (8 if backward else 0)
        return float(per * self.layers * self.attn_width * token_pairs)

    def flops(self, tokens: int, token_pairs: int, forward_passes: int = 1, backward: bool = True) -> float:
        return tokens * self.per_token(forward_passes, backward) + self.attention(token_pairs, forward_passes, backward)


def flop_shape(model: nn.Module) -> FlopShape:
    """Frozen and trainable matmul parameters of ``model`` (each shared tensor once), its layers and attention width."""
    skip = _embedding_weights(model)
    frozen = trainable = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or id(p) in skip or ".original_module." in name:  # PEFT's unused copy of a trained head
            continue
        seen.add(id(p))
        shape = getattr(getattr(p, "quant_state", None), "shape", None)  # a 4-bit weight packs 2 values a byte
        n = int(torch.Size(shape).numel()) if shape is not None else p.numel()
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    layers = int(_first(config, "num_hidden_layers", "n_layer", "num_layers") or 0)
    width = _first(config, "num_attention_heads", "n_head")
    head = getattr(config, "head_dim", None)
    hidden = _first(config, "hidden_size", "n_embd", "d_model") or 0
    attn = int(width * head) if width and head else int(hidden)
    return FlopShape(frozen, trainable, layers, attn)


def _first(config: Any, *names: str) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# --- peaks --------------------------------------------------------------------------------------------------------


def matmul_precision(precision: str, device: torch.device) -> str:
    """The precision the matmuls of a run in ``precision`` (fp32 / bf16 / fp16 autocast) execute in."""
    if precision in ("bf16", "fp16"):
        return precision
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def gpu_peak(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` (``torch.cuda.get_device_name``) in ``precision``; None if
    the table does not know it."""
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if pattern.lower() in name.lower():
            tf = peaks.get(precision)
            return tf * 1e12 if tf is not None else None
    return None


def probe_cpu_peak(dtype: torch.dtype = torch.float32, seconds: float = PROBE_SECONDS) -> float:
    """The best FLOP/s of square matmuls (``F.linear``, the op a model's linear layers run) over about ``seconds``
    on this process's threads. The size is ``PROBE_SIZE`` unless a call would take over 50 ms (a CPU without native
    bf16 or fp16 runs them ~25× slower than fp32; ``torch.mm`` in bf16 slower still, so it is not what is probed)."""
    import torch.nn.functional as F

    def rate(n: int) -> tuple[float, float]:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t = time.perf_counter()
        F.linear(a, b)
        dt = max(time.perf_counter() - t, 1e-9)
        return 2 * n**3 / dt, dt

    small, _ = rate(128)  # warms up the kernels too
    n = PROBE_SIZE
    while n > 128 and 2 * n**3 / small > 0.05:
        n //= 2
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    F.linear(a, b)
    best, end = small, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        F.linear(a, b)
        dt = time.perf_counter() - t
        if dt > 0:
            best = max(best, 2 * n**3 / dt)
    return best


def _cache_file() -> Path:
    from .data import cache_dir

    return cache_dir() / "cpu_peak.json"


def cpu_peak(precision: str) -> tuple[float, str]:
    """(peak FLOP/s, source) of this CPU for matmuls in ``precision``: probed once, then read from the cache."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    key = f"{cpu_name()} | threads={torch.get_num_threads()} | {precision}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key]), f"probe (cached in {path})"
    peak = probe_cpu_peak(dtype)
    cached[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent workers never read half a file
    except OSError:
        pass
    return peak, "probe"


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for a run on ``device`` in ``precision``; (None, why) when unknown."""
    mp = matmul_precision(precision, device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, mp)
        return (peak, f"table: {name} {mp} dense") if peak else (None, f"unknown GPU {name!r} ({mp})")
    if device.type == "cpu":
        peak, source = cpu_peak(mp)
        return peak, f"{source}: {cpu_name()}, {torch.get_num_threads()} threads, {mp}"
    return None, f"no peak known for device type {device.type!r}"


def utilisation(model_flops: float, peak: float | None, seconds: float) -> float | None:
    """MFU = model FLOPs / (peak FLOP/s × seconds); None without a peak or time."""
    if not peak or not seconds or seconds <= 0:
        return None
    return model_flops / (peak * seconds)


def speed_cost(shape: FlopShape | None, capabilities: Any, tokens: int, token_pairs: int, seconds: float,
               device: torch.device, precision: str) -> dict[str, Any]:
    """A run's ``model_flops``, ``mfu``, ``peak_flops`` and ``peak_flops_source`` (cost fields of its record)."""
    if shape is None:
        return {"model_flops": None, "mfu": None, "peak_flops": None, "peak_flops_source": "no model shape"}
    passes = int(getattr(capabilities, "forward_passes", 1))
    backward = bool(getattr(capabilities, "backward", True))
    flops = shape.flops(tokens, token_pairs, passes, backward)
    peak, source = device_peak(device, precision)
    return {"model_flops": flops, "mfu": utilisation(flops, peak, seconds), "peak_flops": peak,
            "peak_flops_source": source}


__all__ = ["speed_cost", "FlopShape", "flop_shape", "gpu_peak", "cpu_peak", "probe_cpu_peak", "device_peak", "utilisation",
           "GPU_PEAK_TFLOPS", "matmul_precision"]
