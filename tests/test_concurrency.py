"""Two `negbench ablate` processes of one spec, started together, share its cells: each cell runs
exactly once, on a store that does not exist yet (both create it at once) and on one that does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import experiment_runs
from conftest import write_spec as write

from negbench.harness.spec import load_spec
from negbench.harness.store import CELL_TAG

THREE = '''
name = "{name}"
suites = ["digits"]
strategies = ["in-batch", "random", "debiased"]
seeds = 1
budget = "samples=2000"
[overrides]
"batch_size" = 128
"eval.linear_epochs" = 10
'''
ROOT = Path(__file__).resolve().parents[1]


def three_cells(tmp_path: Path, name: str) -> str:
    """A spec of 3 cells (3 strategies, one seed) named ``name``; its path."""
    return write(tmp_path, THREE.format(name=name), f"{name}.toml")


def together(spec: str, uri: str, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Two `negbench ablate SPEC` processes started at the same moment; their results."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEGBENCH_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "negbench.harness.cli", "ablate", spec, "--tracking-uri", uri,
           "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


def check(spec: str, uri: str, results: list[subprocess.CompletedProcess]) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        assert "3 of 3 cells completed" in r.stdout, r.stdout[-2000:]
    s = load_spec(spec)
    finished = experiment_runs(uri, s.name, "FINISHED")
    keys = sorted(r.data.tags[CELL_TAG] for r in finished)
    assert keys == sorted(c.key for c in s.cells()), "a cell ran twice, or not at all"
    assert len(finished) == 3
    assert not experiment_runs(uri, s.name, "RUNNING")


def test_two_ablations_started_together_share_the_cells(tmp_path):
    store = tmp_path / "runs"  # nothing exists yet: both processes create the stores at once
    uri = f"sqlite:///{store / 'mlflow.db'}"
    first = three_cells(tmp_path, "shared")
    check(first, uri, together(first, uri, tmp_path))
    assert (store / "queue.db").is_file()  # the queue lives beside the tracking store
    # the same on the store that now exists, with a new spec (a new experiment, a new queue)
    second = three_cells(tmp_path, "shared-again")
    check(second, uri, together(second, uri, tmp_path))
