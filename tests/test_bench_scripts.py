"""The benchmark scripts start as scripts (their folder first on sys.path) and parse options:
a script named like one of our packages would shadow it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = sorted((Path(__file__).resolve().parent.parent / "bench").glob("*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[p.name for p in BENCH])
def test_bench_script_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_health_table_resumes_from_the_runs_it_recorded(tmp_path):
    script = Path(__file__).resolve().parent.parent / "bench" / "health_table.py"
    cmd = [sys.executable, str(script), "--suites", "digits", "--strategies", "in-batch",
           "--budget", "samples=512", "--set", "eval.linear_epochs=5",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "recorded before" not in first.stdout and "| digits | in-batch |" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "recorded before" in again.stdout
    row = [ln for ln in first.stdout.splitlines() if ln.startswith("| digits | in-batch |")]
    assert row and row == [ln for ln in again.stdout.splitlines()
                           if ln.startswith("| digits | in-batch |")]


def test_strategy_speed_times_a_strategy_with_a_filter():
    script = Path(__file__).resolve().parent.parent / "bench" / "strategy_speed.py"
    out = subprocess.run([sys.executable, str(script), "--strategies", "semi-hard",
                          "--fn-filter", "self-guided", "--batch-sizes", "32", "--repeats", "3",
                          "--rounds", "1", "--no-peer", "--quiet", "1", "--n-train", "500"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| semi-hard x self-guided")]
    assert len(rows) == 1 and "error" not in rows[0].lower(), out.stdout[-2000:]


GPU_CHECK = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    r = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("gpu_check: no CUDA device here (torch.cuda.is_available() is "
                                "False); nothing to check")


@pytest.mark.slow
def test_gpu_check_rehearses_every_part_on_a_cpu(tmp_path):
    """The whole script at tiny sizes on the CPU: each part exits 0 and the table has a row for
    each part and each strategy, so a GPU session's one run is not spent on a script bug."""
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "STEPS": "2",
           "OVERHEAD_SAMPLES": "512", "REPEATS": "1", "STRATEGIES": "in-batch random",
           "SUITES": "digits", "FAST_SETS": "--set speed.channels_last=true",
           "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, r.stderr
    for part in ("sync-debug", "overhead", "run-fp32", "run-fast", "strategies"):
        assert f"| {part} | 0 |" in r.stdout, (part, r.stdout)
    assert "| digits | in-batch |" in r.stdout and "| digits | random |" in r.stdout
    assert "samples/s, kNN 0." in r.stdout and "error" not in r.stdout
