"""Hard negatives are likelier to be false negatives: at one fixed trained checkpoint on digits,
`dynamic` and `semi-hard` select same-class negatives more often than `random`, by more than the
seed-to-seed spread."""

from __future__ import annotations

import statistics

import pytest

from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.runner import Trainer, probe_selection


@pytest.fixture(scope="module")
def checkpoint() -> Trainer:
    cfg = build_config("digits", "in-batch", seed=0, budget=BudgetConfig("samples", 20_480))
    t = Trainer(cfg)
    t.train()
    t.encoder.eval()
    return t


def test_hard_strategies_have_higher_fnr_than_random(checkpoint):
    seeds = range(4)
    fnr = {name: [probe_selection(checkpoint, name, seed=s, batches=4)["fnr"] for s in seeds]
           for name in ("random", "semi-hard", "dynamic")}
    rand_hi = max(fnr["random"])
    spread = statistics.pstdev(fnr["random"])
    for hard in ("semi-hard", "dynamic"):
        assert min(fnr[hard]) > rand_hi, fnr
        gap = statistics.mean(fnr[hard]) - statistics.mean(fnr["random"])
        assert gap > 5 * (spread + statistics.pstdev(fnr[hard])), (hard, fnr)
    # and random stays near its closed form (10 balanced classes: ~0.1)
    assert abs(statistics.mean(fnr["random"]) - 0.1) < 0.02
