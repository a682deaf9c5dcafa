"""The memory meter measures each run apart: the high-water mark restarts, and the starting level is recorded."""

import sys

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
