"""Library chatter that says nothing about the user's run, silenced in the processes that train: the ``eft``
command and the sweep's workers (local or Ray). Core: it imports nothing of the package, so any layer may call it.
"""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Silence deprecations, optional kernels not installed, and the hints of the libraries under the loop."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", message=".*kernels.*")
    warnings.filterwarnings("ignore", message=".*low_cpu_mem_usage.*")  # PEFT's EVA hint for GPU memory
    for name in ("bitsandbytes", "transformers", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
