"""The benchmark scripts start as scripts (their folder first on sys.path) and parse options:
a script named like one of our packages would shadow it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
