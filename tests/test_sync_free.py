"""No host sync inside the training step.

On a GPU, CUDA's sync debug mode turns any synchronising call in `Trainer.step` into an error.
On a CPU nothing synchronises, so the check is on the API instead: the tensor methods that read
a value back to the host (`item`, `tolist`, `bool(t)`, `int(t)`, `float(t)`, `numpy`, `cpu`)
raise while every strategy selects, the objective runs, the negative meter observes and the
strategy updates, on `make_ctx` inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.check import HostRead, no_host_reads
from negbench.harness.config import ObjectiveConfig, build_config, parse_budget
from negbench.harness.metrics import NegativeMeter
from negbench.harness.objectives import make_objective


def test_the_guard_catches_a_read():
    t = torch.ones(3)
    with no_host_reads(), pytest.raises(HostRead):
        t.sum().item()
    with no_host_reads(), pytest.raises(HostRead):
        if t.sum() > 0:  # a data-dependent branch reads the value
            pass
    assert t.sum().item() == 3.0  # restored


@pytest.mark.parametrize("name", strategies.names())
def test_select_objective_meter_and_update_read_nothing_back(name):
    n, d, b = 300, 16, 8
    table = Table(n, d)
    labels = torch.arange(n) % 10
    strat = strategies.create(name, None, dim=d, n_train=n)
    objective = make_objective(ObjectiveConfig())
    meter = NegativeMeter(labels)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        ids = torch.randperm(n, generator=g)[:b]
        q = F.normalize(table.z[ids] + 0.1 * torch.randn(b, d, generator=g), dim=1)
        k = F.normalize(table.z[ids] + 0.1 * torch.randn(b, d, generator=g), dim=1)
        q.requires_grad_(True)
        ctx = make_ctx(ids, table, step=step, fraction=step / 3, seed=step, strategy=name)
        with no_host_reads():
            negs = strat.select(q, k, ctx)
            out = objective(negs)
            out.loss.backward()
            meter.observe(negs, out.sim)
            strat.update(q.detach(), k.detach(), ctx)
    interval, total = meter.snapshot()  # the one read, at a log interval
    assert total["negatives_per_anchor"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: CUDA's sync "
                    "debug mode is the GPU-side check (this machine has none)")
@pytest.mark.parametrize("name", strategies.names())
def test_no_cuda_sync_inside_the_step(name):
    from negbench.harness.runner import Trainer

    cfg = build_config("digits", name, budget=parse_budget("steps=3"),
                       sets={"device": "cuda", "batch_size": "64"})
    t = Trainer(cfg)
    t.budget.start()
    t.step(t.budget.next_batch_size())  # the first step may allocate and warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.step(t.budget.next_batch_size())
    finally:
        torch.cuda.set_sync_debug_mode("default")
