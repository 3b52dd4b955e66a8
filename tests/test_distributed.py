"""Data-parallel runs: 2 ranks with batch B/2 each (gloo, CPU processes) against 1 rank with
batch B. They must select the same negatives, give the same loss and make the same updates.

The suite is bbc-news: its encoder normalises per sample (layer norm), so a rank's half batch
meets exactly the computation the whole batch meets in one process (batch norm would not: its
statistics are per rank on a CPU).
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from negbench.harness.config import build_config, parse_budget

SETS = {
    "in-batch": {},
    "memory-bank": {"strategy.K": "48"},
    "dynamic": {"strategy.R": "2", "strategy.K": "4", "strategy.r_max": "16"},
}
STEPS, BATCH = 4, 16


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signature(negs) -> torch.Tensor:
    """Each anchor's selected candidates as sorted dataset ids (-2 where unselected)."""
    sel = negs.selected()  # (A, W)
    ids = negs.candidate_ids().expand(sel.shape)  # (A, W)
    return torch.cat([negs.anchor_ids[:, None],
                      torch.where(sel, ids, -2).sort(dim=1).values], dim=1)


def trace(strategy: str) -> dict:
    """STEPS steps of a run (whatever the process group around it): per step the loss and the
    selection, then the encoder's parameters."""
    from negbench.harness.runner import Trainer

    cfg = build_config("bbc-news", strategy, seed=0, budget=parse_budget(f"steps={STEPS}"),
                       sets={"batch_size": str(BATCH), **SETS[strategy]})
    t = Trainer(cfg)
    t.keep_last_negs = True
    t.budget.start()
    losses, sigs, grads = [], [], []
    while (b := t.budget.next_batch_size()) > 0:
        t.step(b)
        losses.append(float(t.last_loss))
        sigs.append(signature(t.last_negs))
        grads.append([p.grad.clone() for p in t.encoder.parameters() if p.grad is not None])
    params = [p.detach().clone() for p in t.encoder.parameters()]
    return {"loss": losses, "sig": sigs, "grads": grads, "params": params,
            "samples": t.budget.samples, "world": t.dist.world if t.dist else 1}


def _rank(rank: int, world: int, port: int, strategy: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = trace(strategy)
    torch.save(result, f"{out}.{rank}")


def two_ranks(strategy: str, out: str) -> list[dict]:
    """The trace of each of 2 spawned ranks (gloo on CPU processes), saved at ``out``.{rank}."""
    mp.start_processes(_rank, args=(2, _port(), strategy, out), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize("strategy", list(SETS))
def test_two_ranks_with_half_batches_equal_one_rank(strategy, tmp_path):
    one = trace(strategy)
    two = two_ranks(strategy, str(tmp_path / "trace"))
    assert one["world"] == 1 and two[0]["world"] == 2
    for r in two:  # every rank sees the global batch: the same selection, loss and model
        assert r["samples"] == one["samples"] == STEPS * BATCH  # the budget counts globally
        for s1, s2 in zip(one["sig"], r["sig"], strict=True):
            assert torch.equal(s1, s2)
        assert r["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
        for g1, g2 in zip(one["grads"], r["grads"], strict=True):  # exact gradients, each step
            for a, b in zip(g1, g2, strict=True):  # up to float32 summation order
                assert (b - a).norm() <= 1e-4 * a.norm() + 1e-8
        for p1, p2 in zip(one["params"], r["params"], strict=True):
            torch.testing.assert_close(p2, p1, rtol=1e-3, atol=1e-3)


def test_a_distributed_run_through_torchrun_completes(tmp_path):
    """`torchrun -m negbench.harness.cli run` with 2 ranks: one tracked run, its budget counted
    once."""
    import json
    import subprocess

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_port()), "-m", "negbench.harness.cli", "run", "--suite", "digits",
           "--strategy", "memory-bank", "--budget", "samples=1024", "--set", "batch_size=128",
           "--set", "eval.linear_epochs=5", "--tracking-uri", uri, "--json", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads(p.stdout.strip().splitlines()[-1])  # rank 0 prints, the others don't
    assert metrics["samples_seen"] == 1024 and metrics["steps"] == 8
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("negbench").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
