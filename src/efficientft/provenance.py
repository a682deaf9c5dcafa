"""Provenance: what code, packages, data and hardware produced a result, so it can be traced and re-run."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

from .content import file_sha256  # noqa: F401 - data files in a run's provenance
from .version import __version__

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "scikit-learn", "scipy",
            "safetensors", "tokenizers", "galore-torch", "ray")


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The git commit of the EfficientFT source and whether the tree had uncommitted changes."""
    src = Path(__file__).resolve().parent
    info: dict = {"efficientft": __version__, "commit": None, "dirty": None}
    try:
        top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        info["commit"] = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        info["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # installed from a wheel, or git is missing: the package version is what we know
    return info


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device: torch.device) -> dict:
    info = {"machine": platform.machine(), "platform": platform.platform(), "host": socket.gethostname(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "processor": cpu_name()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
