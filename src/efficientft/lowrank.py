"""The low-rank product of LoRA-family adapters, ``base + s · (x Aᵀ) Bᵀ``, with layouts chosen for thin matrices.

A rank-r adapter multiplies a (tokens × d) activation by (d × r) and (r × d) factors. Through ``nn.Linear``
(PEFT's ``lora_B(lora_A(x))``) autograd computes the backward as ``g @ B`` and ``gᵀ @ h``, whose operands put the
long dimension where BLAS handles it worst: on a CPU these two products take 4–6× longer than the same products
written in the transposed order (``(Bᵀ gᵀ)ᵀ``, ``(hᵀ g)ᵀ``: the figures are in ``BENCHMARKS.md``). This
:class:`torch.autograd.Function` computes the forward and all four backward products in the fast order, and adds
the adapter's output to the frozen layer's output in the same GEMM (``addmm``), so it costs one pass less.
It is mathematically the same function; ``tests/test_lowrank.py`` checks values and gradients against plain
autograd, in fp32 and under bf16 autocast.

:class:`FastLoraLinear` puts it under PEFT's LoRA layers through PEFT's custom-layer hook
(``LoraConfig._register_custom_module``): PEFT still builds, initialises (PiSSA, OLoRA, EVA ...), saves, loads
and merges the adapters; only the plain-LoRA forward is ours. Anything else — DoRA and other PEFT variants,
several active adapters, merged or disabled adapters, extra arguments — goes to PEFT's own forward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _LowRankAdd(torch.autograd.Function):
    """``base + s · x Aᵀ Bᵀ`` for x (..., d_in), A (r, d_in), B (d_out, r), base (..., d_out)."""

    @staticmethod
    def forward(ctx, base, x, a, b, scaling):
        dtype = compute_dtype(x)
        dev = x.device.type
        with torch.autocast(dev, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            a_, b_ = a.to(dtype), b.to(dtype)
            h_t = a_ @ x2.t()  # (r, T): the fast order for a thin product
            out_dtype = torch.promote_types(base.dtype, dtype)  # as ``base + lora`` would give
            out = torch.addmm(base.reshape(-1, base.shape[-1]).to(out_dtype), h_t.t().to(out_dtype),
                              b_.t().to(out_dtype), alpha=scaling)
        ctx.save_for_backward(x2, h_t, a_, b_)
        ctx.scaling, ctx.shapes = scaling, (x.shape, x.dtype, a.dtype, b.dtype, base.dtype)
        return out.reshape(*base.shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, h_t, a_, b_ = ctx.saved_tensors
        x_shape, x_dtype, a_dtype, b_dtype, base_dtype = ctx.shapes
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1]).to(a_.dtype)
        d_x = d_a = d_b = None
        d_h_t = (b_.t() @ g.t()).mul_(s)  # (r, T) = s · Bᵀ gᵀ
        if ctx.needs_input_grad[3]:
            d_b = (h_t @ g).t().mul(s).to(b_dtype)  # (d_out, r) = s · gᵀ h = s · (hᵀ g)ᵀ
        if ctx.needs_input_grad[2]:
            d_a = (d_h_t @ x2).to(a_dtype)  # (r, d_in)
        if ctx.needs_input_grad[1]:
            d_x = (d_h_t.t() @ a_).reshape(x_shape).to(x_dtype)
        d_base = grad.to(base_dtype) if ctx.needs_input_grad[0] else None
        return d_base, d_x, d_a, d_b, None


def lowrank_add(base: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scaling: float) -> torch.Tensor:
    """``base + scaling · x Aᵀ Bᵀ`` (autocast-aware: computed in the autocast dtype when autocast is on)."""
    return _LowRankAdd.apply(base, x, a, b, float(scaling))


@functools.cache
def fast_lora_class() -> type:
    """PEFT's ``lora.Linear`` with our plain-LoRA forward (built on first use, so that PEFT is imported lazily)."""
    from peft.tuners.lora.layer import Linear

    class FastLoraLinear(Linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            active = self.active_adapters
            if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
                    or active[0] not in self.lora_A or active[0] in self.lora_variant):
                return super().forward(x, *args, **kwargs)
            name = active[0]
            result = self.base_layer(x)
            a = self.lora_A[name].weight
            x = self._cast_input_dtype(x, a.dtype)
            out = lowrank_add(result, self.lora_dropout[name](x), a, self.lora_B[name].weight,
                              self.scaling[name])
            return out.to(result.dtype)

    return FastLoraLinear


def use_fast_lora(config) -> None:
    """Make PEFT build :class:`FastLoraLinear` for the ``nn.Linear`` targets of this ``LoraConfig``."""
    config._register_custom_module({nn.Linear: fast_lora_class()})
