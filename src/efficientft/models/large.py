"""Large models on small memory: quantized frozen bases (bitsandbytes) and gradient checkpointing.

**Quantized bases** (QLoRA, Dettmers et al. 2023, arXiv 2305.14314): the frozen ``nn.Linear`` weights of the
backbone are stored in 4-bit NormalFloat (NF4) with double quantisation of the block scales, or in LLM.int8()
8-bit, and dequantized block by block in the forward pass; 4-bit layers compute in ``quant_compute_dtype``. The
task head is kept out of quantisation (it trains, and a 4-bit head would not): the head's module names are read
from the architecture built on the meta device, so no weights are materialised twice. Only methods that declare
``capabilities.quantized_base`` may run on such a base (:func:`efficientft.methods.capabilities.check_quantized`):
a method that trains or factorises the base weights themselves (full, GaLore, SIFT, PiSSA, OLoRA) needs them in full
precision.

**Gradient checkpointing** recomputes each transformer layer's activations in the backward pass instead of keeping
them. It is enabled with the *non-reentrant* variant of ``torch.utils.checkpoint``: the reentrant one returns no
gradient for the parameters inside a checkpointed layer when none of the layer's inputs requires a gradient, which
is the case under every adapter method (the embeddings are frozen), so adapters would silently not train.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..allocator import release_freed_memory
from ..errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def quantization_config(quantize: str, compute_dtype: str | torch.dtype | None, skip: list[str]) -> Any:
    """The ``BitsAndBytesConfig`` of ``--quantize``: NF4 + double quantisation, or LLM.int8(); ``skip`` stays
    full precision (the task head)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError("--quantize needs the bitsandbytes package: pip install bitsandbytes.") from None
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype if isinstance(compute_dtype, torch.dtype)
                                  else DTYPES[compute_dtype or "fp32"],
                                  llm_int8_skip_modules=list(skip))
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip))


def head_names(skeleton: nn.Module) -> list[str]:
    """The task head's top-level module names (of the architecture built on the meta device: no weights)."""
    from .roles import head_modules

    return head_modules(skeleton)


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the modules bitsandbytes holds in 4 or 8 bits."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def is_quantized(model: nn.Module) -> bool:
    return bool(quantized_modules(model))


def own_full_precision_tensors(model: nn.Module) -> None:
    """Give the parameters and buffers that stayed full precision (embeddings, norms, the head) their own memory.

    On the CPU ``from_pretrained`` leaves them as views into the memory-mapped checkpoint file, and one of them
    keeps the whole mapping alive: every page of the file that quantisation read stays resident, so a 4-bit model
    held the full-precision checkpoint's size in RSS on top of its 4-bit weights (measured: 0.34 B LLaMA, 1.29 GB
    of file pages). A copy costs only the full-precision tensors' size and releases the mapping.
    """
    import bitsandbytes as bnb

    packed = (bnb.nn.Params4bit, bnb.nn.Int8Params)
    with torch.no_grad():
        for module in model.modules():
            for p in module._parameters.values():
                if p is not None and p.device.type == "cpu" and not isinstance(p, packed):
                    p.data = p.data.clone()
            for name, b in module._buffers.items():
                if b is not None and b.device.type == "cpu":
                    module._buffers[name] = b.clone()
    release_freed_memory()


def keep_one_layout(model: nn.Module) -> None:
    """Keep every 4-bit layer in the one weight layout it trains in, in evaluation too.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` repacks its weight into a CPU inference layout the
    first time it runs outside training mode without gradients (an evaluation, EVA's data-driven init), and keeps
    it: every later forward, training ones included, then goes through a bf16 inference kernel that has no
    backward (the next training step failed: "a view of a leaf Variable that requires grad is being used in an
    in-place operation"), and evaluation computed in bf16 whatever ``quant_compute_dtype`` the run key names. The
    layer reads whether to repack from ``support_avx512bf16_for_cpu``, set once from the CPU's features when it
    is built; turned off here, evaluation computes exactly as training does, on every CPU.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Checkpoint every layer of a Hugging Face model with the non-reentrant variant (see the module docstring).

    A model class without checkpointing support is refused with a clear error before training.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: the model class {type(model).__name__} does not support "
                          "gradient checkpointing; drop the flag.")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x (the older name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


__all__ = ["DTYPES", "quantization_config", "head_names", "quantized_modules",
           "is_quantized", "enable_gradient_checkpointing", "own_full_precision_tensors", "keep_one_layout"]
