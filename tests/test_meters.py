"""The memory meter measures each run apart: the high-water mark restarts, and the starting level is recorded."""

import sys
import time

import numpy as np
import pytest
import torch

from efficientft.meters import PeakMemory, release_freed_memory, rss_bytes


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
