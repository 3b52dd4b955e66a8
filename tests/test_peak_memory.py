"""A run's peak memory is its own: the high-water mark starts again with each run."""

from __future__ import annotations

import sys

import pytest
import torch

from negbench.harness.cost import peak_host_mb, reset_peak_host


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_high_water_mark_resets():
    assert reset_peak_host()
    base = peak_host_mb()
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    big.add_(1)
    del big
    high = peak_host_mb()
    assert high >= base + 48  # the large allocation is seen
    assert reset_peak_host()
    assert peak_host_mb() < high - 32  # and forgotten once the mark is reset
