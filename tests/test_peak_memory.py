"""A run's peak memory is its own: the high-water mark starts again with each run.

Each check runs in a fresh process: a process that has already run other tests holds freed
memory the allocator can reuse without the resident set growing, so a high-water mark measured
there depends on what ran before."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


def _fresh(code: str) -> dict:
    """Run ``code`` in a new Python process; it prints one JSON object last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_only
def test_the_high_water_mark_resets():
    r = _fresh("""
        import json, torch
        from negbench.harness.cost import peak_host_mb, reset_peak_host
        ok1 = reset_peak_host()
        base = peak_host_mb()
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        big.add_(1)
        del big
        high = peak_host_mb()
        ok2 = reset_peak_host()
        print(json.dumps({"ok": ok1 and ok2, "base": base, "high": high,
                          "after": peak_host_mb()}))
    """)
    assert r["ok"]
    assert r["high"] >= r["base"] + 48, r  # the large allocation is seen
    assert r["after"] < r["high"] - 32, r  # and forgotten once the mark is reset


@linux_only
def test_a_small_run_after_a_large_one_reports_its_own_peak(tmp_path):
    """One process, a large cell then a small one, as an ablation runs them: the small run's
    peak_mem_mb is its own, below the large one's (it was the process's high-water mark)."""
    r = _fresh(f"""
        import json
        from negbench.harness.config import build_config, parse_budget
        from negbench.harness.runner import run

        uri = "sqlite:///{tmp_path / 'mlflow.db'}"
        big = build_config("digits", "in-batch", budget=parse_budget("samples=1024"),
                           sets={{"batch_size": "1024", "suite.width": "64",
                                  "eval.linear_epochs": "5"}})
        small = build_config("digits", "in-batch", budget=parse_budget("samples=64"),
                             sets={{"batch_size": "32", "suite.width": "8",
                                    "eval.linear_epochs": "5"}})
        peak_big = run(big, tracking_uri=uri, experiment="peaks").metrics["peak_mem_mb"]
        peak_small = run(small, tracking_uri=uri, experiment="peaks").metrics["peak_mem_mb"]
        print(json.dumps({{"big": peak_big, "small": peak_small}}))
    """)
    assert r["small"] < r["big"] - 100, r
