"""examples/own_loop.py: negbench's strategies and objective in a plain PyTorch loop."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"


def _main():
    return runpy.run_path(str(EXAMPLE), run_name="own_loop")["main"]


def test_own_loop_learns_with_in_batch_negatives():
    out = _main()(["--strategy", "in-batch", "--steps", "60", "--batch", "64"])
    assert out["loss_last"] < out["loss_first"] - 0.5, out
    assert out["retrieval_after"] > out["retrieval_before"] + 0.02, out


@pytest.mark.parametrize("name", ["memory-bank", "dynamic", "supcon"])
def test_own_loop_runs_the_stateful_strategies(name):
    """memory-bank takes its keys from the loop's momentum encoder, dynamic re-embeds the
    training set through encode_all; both finish with the contract checked (strategy.check)."""
    if name == "supcon":  # an oracle reads ctx.labels, which a plain loop does not give
        with pytest.raises(Exception, match="labels"):
            _main()(["--strategy", name, "--steps", "3", "--batch", "32"])
        return
    out = _main()(["--strategy", name, "--steps", "12", "--batch", "32"])
    assert all(v == v for v in out.values())  # finite: no NaN


def test_own_loop_runs_as_a_script():
    r = subprocess.run([sys.executable, str(EXAMPLE), "--strategy", "hcl", "--steps", "5",
                        "--batch", "32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hcl, 5 steps: loss ")
