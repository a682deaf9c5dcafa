"""The memory meter measures each run apart: the high-water mark restarts, and the starting level is recorded."""

import os
import sys
import time

import numpy as np
import pytest
import torch

from efficientft.meters import CpuShare, PeakMemory, release_freed_memory, rss_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux features")
def test_peak_restarts_at_each_reset_and_records_the_start():
    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    big = np.ones(200 * 2**20 // 8)  # 200 MB, touched
    first = meter.read()
    assert first["peak_rss_since_run_start"] is True
    assert first["peak_rss_mb"] - first["rss_start_mb"] >= 190
    del big
    assert release_freed_memory() is True
    meter.reset()
    second = meter.read()
    assert second["rss_start_mb"] == pytest.approx(rss_bytes() / 2**20, abs=20)
    assert second["peak_rss_mb"] - second["rss_start_mb"] < 50  # the earlier 200 MB are not this run's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS is read from /proc")
def test_memory_sampler_sees_a_buffer_held_during_training():
    from efficientft.meters import MemorySampler

    release_freed_memory()
    with MemorySampler(torch.device("cpu"), interval=0.01) as idle:
        time.sleep(0.3)
    base = idle.summary()
    with MemorySampler(torch.device("cpu"), interval=0.01) as s:
        buf = np.ones(300 * 2**20 // 8)  # a "step" that holds 300 MB (touched) for most of the window
        time.sleep(0.5)
        del buf
        release_freed_memory()
        time.sleep(0.02)
    out = s.summary()
    assert out["memory_source"] == "rss" and out["memory_samples"] >= 20
    assert out["memory_p99_mb"] - base["memory_p99_mb"] >= 280
    assert out["memory_max_sampled_mb"] >= out["memory_p99_mb"] >= out["memory_mean_mb"]
    assert out["memory_mean_mb"] - base["memory_mean_mb"] >= 150  # held for most of the samples
    assert base["memory_p99_mb"] - base["memory_mean_mb"] < 50  # no buffer, no spread


def test_a_run_records_memory_mean_and_p99_beside_the_peak(tiny_bert):
    from efficientft.train import run
    from tests.conftest import tiny_config

    cost = run(tiny_config(tiny_bert, steps=2, max_train=8, max_eval=8))["cost"]
    assert cost["memory_samples"] >= 2 and cost["memory_source"] == "rss"
    assert 0 < cost["memory_mean_mb"] <= cost["memory_p99_mb"] <= cost["memory_max_sampled_mb"]
    assert cost["memory_max_sampled_mb"] <= cost["peak_rss_mb"] + 1  # samples never exceed the high-water mark


def test_the_cpu_share_is_the_cpu_seconds_over_wall_time_times_threads():
    """Busy: about all of one thread; asleep: about none; on a GPU: nothing recorded (the host's share says little)."""
    threads = torch.get_num_threads()
    busy = CpuShare(torch.device("cpu"))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        pass
    got = busy.read(time.perf_counter() - t0)
    assert got["cpu_threads"] == threads and 0.25 <= got["cpu_s"] <= 0.4
    assert got["cpu_share"] == pytest.approx(got["cpu_s"] / ((time.perf_counter() - t0) * threads), rel=0.05)
    idle = CpuShare(torch.device("cpu"))
    time.sleep(0.3)
    assert idle.read(0.3)["cpu_share"] < 0.2 / threads
    assert CpuShare(torch.device("cuda")).read(1.0) == {}


def test_a_run_records_its_cpu_share(tiny_bert):
    from efficientft.train import run
    from tests.conftest import tiny_config

    cost = run(tiny_config(tiny_bert, steps=2, max_train=8, max_eval=8))["cost"]
    assert cost["cpu_threads"] == torch.get_num_threads() and 0 < cost["cpu_s"] <= cost["wall_s"] * cost["cpu_threads"] * 1.2
    assert cost["cpu_share"] == pytest.approx(cost["cpu_s"] / (cost["wall_s"] * cost["cpu_threads"]))


_HEAP_PROBE = """
import ctypes, sys
from efficientft.config import RunConfig
from efficientft.meters import rss_bytes
from efficientft.runtime import build_runtime
rt = build_runtime(RunConfig(device="cpu", quantize=sys.argv[1] or None))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def block(n):
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    return p
libc.free(block(16 << 20))  # glibc's default: freeing a mapped 16 MiB block raises the mmap threshold to it
big = []
for _ in range(24):  # 4 MiB temporaries (a dequantized weight, an activation gradient), small ones between
    big.append(block(4 << 20))
    block(256 << 10)  # (larger than the holes the imports left, so each lands after its big block)
held = rss_bytes()
for p in big:
    libc.free(p)
print(rt.returns_large_blocks, round((held - rss_bytes()) / 2**20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_quantized_cpu_runtime_returns_freed_large_blocks_to_the_system():
    """The 4-bit CPU run's per-step temporaries leave the resident set when freed (BENCHMARKS.md §7: without it a
    QLoRA run held 24-38 % more than it used); other runs keep glibc's default."""
    import subprocess

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = {q: subprocess.run([sys.executable, "-c", _HEAP_PROBE, q], env=env, capture_output=True, text=True,
                             check=True, timeout=120).stdout.split() for q in ("", "4bit")}
    assert out["4bit"] == ["True", "96"]  # all 24 x 4 MiB back to the system
    assert out[""][0] == "False" and int(out[""][1]) < 8  # glibc's default keeps them in its heap
