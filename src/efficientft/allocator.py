"""The process's C allocator (glibc): hand freed memory back to the system, and keep large blocks from staying
resident. Set by the runtime before a model loads and used by the meters before they reset; no torch here."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_freed_memory() -> bool:
    """Collect garbage and return freed heap memory to the system (glibc ``malloc_trim``); False where unavailable."""
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 20  # 1 MiB


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc give large freed blocks back to the system at once, so the resident set follows live memory.

    Why: by default glibc *raises* its mmap threshold to the size of each large block freed (up to 32 MiB), so the
    per-step temporaries of a large model (dequantized 4-bit weights, activation gradients: 1-30 MiB each) are then
    carved from its heaps and stay resident after they are freed; a QLoRA run on CPU held 24-38 % more than it
    used (BENCHMARKS.md §7). A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, the same as the environment variable
    ``MALLOC_MMAP_THRESHOLD_``) maps every block of ``threshold`` bytes and more on its own and unmaps it when
    freed; the heap's top is trimmed above ``threshold`` too. Process-wide, and it only changes where *later*
    allocations come from, so it is set before the model loads. A threshold the user set in the environment is
    left alone. Returns whether it is in effect (False off glibc).
    """
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
