"""Budgets are spent exactly and identically; schedules end with the budget."""

from __future__ import annotations

import math

import pytest

from negbench.harness.budget import Budget, learning_rate
from negbench.harness.config import (
    BudgetConfig,
    ConfigError,
    OptimConfig,
    build_config,
    parse_budget,
)
from negbench.harness.runner import run

FAST = {"batch_size": "128", "log_every": "3", "eval.linear_epochs": "20"}


def _run(strategy, budget, **sets):
    cfg = build_config("digits", strategy, seed=0, budget=budget, sets={**FAST, **sets})
    return run(cfg, track=False)


def test_two_strategies_spend_the_same_samples_exactly():
    # 1000 is not a multiple of the batch: the last step is shrunk to the 104 samples left
    a = _run("in-batch", BudgetConfig("samples", 1000))
    b = _run("random", BudgetConfig("samples", 1000))
    assert a.metrics["samples_seen"] == b.metrics["samples_seen"] == 1000
    assert a.metrics["steps"] == b.metrics["steps"] == 8
    # equal budgets, unequal cost: random encodes its negatives on top
    assert b.metrics["cost_trained_samples"] > a.metrics["cost_trained_samples"]


def test_learning_rate_reaches_its_final_value_when_the_budget_ends():
    r = _run("in-batch", BudgetConfig("samples", 1280), **{"optim.final_lr_ratio": "0.1",
                                                            "optim.lr": "0.004"})
    lrs = [h["lr"] for h in r.history]
    assert r.history[-1]["budget_fraction"] == 1.0
    assert lrs[-1] == pytest.approx(0.0004, rel=1e-12)
    assert all(x >= y for x, y in zip(lrs[1:], lrs[2:], strict=False))  # decays after warm-up


def test_schedule_shape():
    cfg = OptimConfig(lr=1.0, warmup=0.1, final_lr_ratio=0.0)
    assert learning_rate(cfg, 0.0) == 0.0
    assert learning_rate(cfg, 0.05) == pytest.approx(0.5)
    assert learning_rate(cfg, 0.1) == pytest.approx(1.0)
    assert learning_rate(cfg, 0.55) == pytest.approx(0.5)
    assert learning_rate(cfg, 1.0) == pytest.approx(0.0, abs=1e-15)


def test_steps_budget_is_exact():
    r = _run("in-batch", BudgetConfig("steps", 5))
    assert r.metrics["steps"] == 5 and r.metrics["samples_seen"] == 5 * 128


def test_flops_budget_stops_within_one_sample():
    probe = _run("in-batch", BudgetConfig("steps", 2))
    per_sample = probe.metrics["flops"] / probe.metrics["samples_seen"]
    total = per_sample * 700
    r = _run("in-batch", BudgetConfig("flops", total))
    assert r.metrics["flops"] <= total * (1 + 1e-9)
    assert r.metrics["flops"] > total - 2 * per_sample * 1.05
    assert r.metrics["budget_spent"] == r.metrics["flops"]


def test_seconds_budget_stops_after_the_limit():
    r = _run("in-batch", BudgetConfig("seconds", 1.0))
    assert r.metrics["wall_seconds"] >= 1.0 and r.metrics["steps"] >= 1


def test_budget_unit_accounting():
    b = Budget(BudgetConfig("samples", 10), batch_size=4)
    sizes = []
    while (n := b.next_batch_size()) > 0:
        sizes.append(n)
        b.charge(n, 1.0)
    assert sizes == [4, 4, 2] and b.fraction == 1.0 and b.done


@pytest.mark.parametrize("text", ["samples=0", "samples=-5", "steps=1.5", "parsecs=3",
                                  "samples=abc", "flops=inf"])
def test_bad_budgets_raise(text):
    with pytest.raises(ConfigError):
        parse_budget(text)


def test_default_budget_comes_from_the_suite():
    cfg = build_config("digits", "in-batch")
    assert (cfg.budget.kind, cfg.budget.amount) == ("samples", 60_000)
    assert math.isclose(parse_budget("2500").amount, 2500)
