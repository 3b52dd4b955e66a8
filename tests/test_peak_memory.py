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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_small_run_after_a_large_one_reports_its_own_peak(tmp_path):
    """One process, a large cell then a small one, as an ablation runs them: the small run's
    peak_mem_mb is its own, below the large one's (it was the process's high-water mark)."""
    from negbench.harness.config import build_config, parse_budget
    from negbench.harness.runner import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    big = build_config("digits", "in-batch", budget=parse_budget("samples=1024"),
                       sets={"batch_size": "1024", "suite.width": "64",
                             "eval.linear_epochs": "5"})
    small = build_config("digits", "in-batch", budget=parse_budget("samples=64"),
                         sets={"batch_size": "32", "suite.width": "8", "eval.linear_epochs": "5"})
    peak_big = run(big, tracking_uri=uri, experiment="peaks").metrics["peak_mem_mb"]
    peak_small = run(small, tracking_uri=uri, experiment="peaks").metrics["peak_mem_mb"]
    assert peak_small < peak_big - 100, (peak_small, peak_big)
