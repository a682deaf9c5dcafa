"""Cost meters: peak memory, phase times, step times and throughput.

Peak memory on the CPU is the process's resident-set high-water mark (``VmHWM``), reset at the start of each run
by writing 5 to ``/proc/self/clear_refs`` (Linux), so that runs sharing one worker process are measured apart.
Before the reset, garbage is collected and glibc's ``malloc_trim(0)`` hands freed heap memory back to the system:
without it the memory a previous run freed but glibc kept (activations live in its arenas) stays resident and is
counted in the next run's peak. ``rss_start_mb`` (the resident set when the run started: libraries, and whatever
the worker keeps between runs) is recorded beside the peak, so that the run's own increment can be read.
On CUDA it is ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` since a reset.

Beside the peak, :class:`MemorySampler` records the memory *over* training, as PEFT's method-comparison benchmark
does (its max, mean and 99th percentile): a background thread samples the resident set (on CUDA: the memory
allocated by tensors) every ~50 ms. A peak alone cannot tell a brief spike (an evaluation batch, an SVD at
initialisation) from memory held all run long; the mean and p99 can.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from .allocator import release_freed_memory


class CpuShare:
    """How much of its cores a run had: the process's CPU seconds (every thread, user and system) over its wall
    time times its torch threads. Near 1 when the run had its cores to itself; 0.5 when its one thread shared a core
    with another busy one (a study beside a test suite, three workers on two cores). Step times and wall times are
    comparable between runs only at like shares: the report marks configurations measured while sharing the CPU.
    On a GPU the host's share says little about the run's speed: nothing is recorded there."""

    def __init__(self, device: torch.device) -> None:
        self.on_cpu = device.type == "cpu"
        self.cpu0 = time.process_time()

    def read(self, wall_s: float) -> dict[str, float]:
        if not self.on_cpu or wall_s <= 0:
            return {}
        cpu_s = time.process_time() - self.cpu0
        threads = torch.get_num_threads()
        return {"cpu_s": cpu_s, "cpu_threads": threads, "cpu_share": cpu_s / (wall_s * threads)}


def read_status(key: str) -> int | None:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    now = read_status("VmRSS")
    return now if now is not None else 0


class PeakMemory:
    """Peak memory since :meth:`reset`: process RSS high-water, plus CUDA figures when a GPU is used."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = False
        self.start = 0

    def reset(self) -> None:
        release_freed_memory()
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float | bool]:
        hwm = read_status("VmHWM")
        if hwm is None:  # not Linux: ru_maxrss is the lifetime peak (kB on Linux, bytes on macOS)
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = ru if sys.platform == "darwin" else ru * 1024
        out: dict[str, float | bool] = {"peak_rss_mb": hwm / 2**20, "peak_rss_since_run_start": self.resettable,
                                        "rss_start_mb": self.start / 2**20}
        if self.device.type == "cuda":
            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        out["peak_memory_mb"] = out.get("cuda_max_allocated_mb", out["peak_rss_mb"])  # the headline figure
        return out


class MemorySampler:
    """Memory sampled every ``interval`` seconds between :meth:`start` and :meth:`stop` (a daemon thread).

    The source is the headline figure's: CUDA memory allocated on a GPU run, else the process RSS. Use as a
    context manager around training; :meth:`summary` gives ``memory_mean_mb``, ``memory_p99_mb`` (nearest-rank
    99th percentile), ``memory_max_sampled_mb`` and the sample count.
    """

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device, self.interval = device, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_now(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self.read_now())

    def start(self) -> MemorySampler:
        self.samples = [self.read_now()]
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="eft-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.samples.append(self.read_now())

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, float | int | str]:
        xs = sorted(self.samples)
        if not xs:
            return {}
        p99 = xs[min(len(xs) - 1, max(0, math.ceil(0.99 * len(xs)) - 1))]
        return {"memory_mean_mb": statistics.fmean(xs) / 2**20, "memory_p99_mb": p99 / 2**20,
                "memory_max_sampled_mb": xs[-1] / 2**20, "memory_samples": len(xs),
                "memory_source": "cuda_allocated" if self.device.type == "cuda" else "rss"}


@dataclass
class StepTimer:
    """Wall time of each optimizer step (all its micro-batches; evaluation is outside); the median skips the warm-up
    steps. An fp16 step the GradScaler skipped is timed and counted too: its forward and backward were computed.
    ``tokens`` counts non-padding tokens only (``padded_tokens`` all), so ``tokens_per_s`` is real text per second.
    ``token_pairs`` sums each example's non-padding length squared (the attention term of the model FLOPs,
    :mod:`efficientft.flops`); ``longest_batch`` is the most tokens, padding included, of one micro-batch.
    ``frozen_param_tokens`` and ``trainable_param_tokens`` sum each step's tokens times its frozen and trainable
    matmul parameters, where the loop counts them step by step (a method that grows: its FLOPs)."""

    device: torch.device
    warmup: int = 3
    times: list[float] = field(default_factory=list)
    tokens: int = 0  # non-padding tokens trained on
    padded_tokens: int = 0
    examples: int = 0
    token_pairs: int = 0
    longest_batch: int = 0
    frozen_param_tokens: float = 0.0
    trainable_param_tokens: float = 0.0
    _t0: float = 0.0

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        self._sync()
        dt = time.perf_counter() - self._t0
        self.times.append(dt)
        return dt

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict[str, float]:
        timed = self.times[self.warmup:] if len(self.times) > self.warmup else self.times
        total = sum(self.times)
        return {
            "median_step_s": statistics.median(timed) if timed else float("nan"),
            "mean_step_s": statistics.fmean(timed) if timed else float("nan"),
            "steps_timed": len(timed),
            "tokens_trained": self.tokens,
            "examples_trained": self.examples,
            "tokens_per_s": self.tokens / total if total else float("nan"),
            "examples_per_s": self.examples / total if total else float("nan"),
            "padding_fraction": 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0,
            "step_time_total_s": total,
        }
