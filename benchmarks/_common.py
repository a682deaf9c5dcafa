"""Shared pieces of the benchmarks: the floor, the PEFT-DoRA reference, the machine, figures as a table."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's code, whatever is installed
os.environ.setdefault("EFT_DATA_DIR", str(ROOT.parent / "shared" / "data" / "glue"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from efficientft.methods import METHODS  # noqa: E402
from efficientft.methods.lora import LoRA  # noqa: E402


class PeftLoRA(LoRA):
    """The reference LoRA: PEFT's own layers and forward (registered in benchmark processes only)."""

    summary = "LoRA through stock PEFT (reference for benchmarks)"
    fast_forward = False


class PeftDoRA(PeftLoRA):
    """The reference DoRA: PEFT's ``use_dora=True`` (registered in benchmark processes only)."""

    summary = "DoRA through stock PEFT (reference for benchmarks)"

    def peft_kwargs(self) -> dict[str, Any]:
        return {"use_dora": True}


def register_references() -> None:
    """``lora-peft`` and ``dora-peft``: the stock-PEFT references, as methods of this process only."""
    for name, cls in (("lora-peft", PeftLoRA), ("dora-peft", PeftDoRA)):
        if name not in METHODS:
            cls.name = name
            METHODS.add(name, cls)


def make_floor(p):
    """The floor of any adapter method: every weight of the backbone frozen, gradients still flowing everywhere.

    From a fully trainable model: every parameter but the task head's gets ``requires_grad=False``, and
    ``enable_input_require_grads()`` (Hugging Face) makes the word-embedding output require grad, so the backward
    pass runs through every layer computing activation gradients, as it must for an adapter in layer 0, but
    computes no weight gradient except the head's. An adapter method adds its own forward and its (small) weight
    gradients to this; nothing can be cheaper.
    """
    from efficientft.models import head_modules
    from efficientft.strategy import Strategy, build_param_groups, roles_by_name
    from efficientft.train import schedule_fn

    heads = head_modules(p.model)
    for name, q in p.model.named_parameters():
        q.requires_grad = any(name.startswith(h + ".") for h in heads)
    p.model.enable_input_require_grads()
    p.groups = build_param_groups(p.model, roles_by_name(p.model, [], heads), Strategy(), p.cfg.lr, 0.0)
    p.optimizer = torch.optim.AdamW(p.groups, lr=p.cfg.lr)
    p.scheduler = torch.optim.lr_scheduler.LambdaLR(p.optimizer, schedule_fn("constant", 0, p.total_steps))
    return p


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads{gpu}, Python {platform.python_version()}")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
