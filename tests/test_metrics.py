"""The negative meter (FNR, weighted FNR, hardness, collisions, deciles), kNN and the random
strategy's FNR against its closed form on real digits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.config import BudgetConfig, build_config
from harness.evaluate import knn_top1
from harness.metrics import NegativeMeter, false_negative_matrix
from harness.runner import run
from strategies import Negatives

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])  # oracle labels of dataset ids 0..7


def _negs(mask, weights=None, pool_ids=(2, 3, 4, 6), sources=None, source_weights=None,
          batch_views=0):
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    pool = F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    return Negatives(anchors=a, positives=a, anchor_ids=torch.tensor([0, 2]), pool=pool,
                     pool_ids=torch.tensor(pool_ids), mask=torch.tensor(mask),
                     weights=weights, sources=sources, source_weights=source_weights,
                     batch_views=batch_views)


def _meter_total(negs):
    meter = NegativeMeter(LABELS)
    meter.observe(negs, negs.similarity())
    return meter.snapshot()[1]


def test_fnr_counts_same_label_pairs():
    # anchor 0 (label 0) uses ids 2, 6 -> labels 1, 0: one false negative
    # anchor 2 (label 1) uses ids 3, 4, 6 -> labels 1, 2, 0: one false negative
    negs = _negs([[True, False, False, True], [False, True, True, True]])
    tot = _meter_total(negs)
    assert tot["fnr"] == 2 / 5 and tot["negatives_per_anchor"] == 2.5
    sim = negs.similarity()
    assert math.isclose(tot["hardness"], float(sim[negs.mask].mean()), rel_tol=1e-6)


def test_weighted_fnr():
    w = torch.tensor([[1.0, 0.0, 0.0, 3.0], [0.0, 2.0, 1.0, 1.0]])
    tot = _meter_total(_negs([[True, False, False, True], [False, True, True, True]], weights=w))
    # same-label weights: 3 (anchor 0, id 6) + 2 (anchor 2, id 3); all selected weights: 4 + 4
    assert math.isclose(tot["fnr_weighted"], 5 / 8)


def test_synthesized_negatives_count_their_sources():
    # candidate 0 is a mix of ids 0 (label 0) and 2 (label 1) with weights 0.3/0.7
    src = torch.tensor([[0, 2], [3, 3], [4, 4], [6, 6]])
    sw = torch.tensor([[0.3, 0.7], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    negs = _negs([[True, False, False, False], [True, False, False, False]],
                 pool_ids=(-1, 3, 4, 6), sources=src, source_weights=sw)
    fn = false_negative_matrix(negs, LABELS)
    assert torch.allclose(fn[:, 0], torch.tensor([0.3, 0.7]))
    assert math.isclose(_meter_total(negs)["fnr"], 0.5)


def test_instance_collisions_are_counted_apart():
    # the pool holds anchor 0's own instance (id 0) at row 3, outside the batch views: masked
    negs = _negs([[True, True, True, False], [True, False, False, True]], pool_ids=(5, 3, 4, 0))
    tot = _meter_total(negs)
    assert tot["collisions_per_anchor"] == 0.5
    # the same rows inside the step's own views are not collisions
    negs = _negs([[True, True, True, False], [True, False, False, True]], pool_ids=(5, 3, 4, 0),
                 batch_views=4)
    assert _meter_total(negs)["collisions_per_anchor"] == 0.0


def test_snapshot_gives_interval_and_total_and_stays_on_device():
    meter = NegativeMeter(LABELS)
    a = _negs([[True, False, False, True], [False, True, True, True]])
    b = _negs([[True, True, False, False], [True, False, False, False]])
    out = meter.observe(a, a.similarity())
    assert out is None and meter.acc.device == LABELS.device  # no host values in the step
    first, _ = meter.snapshot()
    meter.observe(b, b.similarity())
    second, total = meter.snapshot()
    assert first["fnr"] == 2 / 5
    assert second["fnr"] == 1 / 3  # ids 2, 3 for label 0; id 2 for label 1
    assert math.isclose(total["fnr"], 3 / 8)


def test_deciles_split_pairs_by_hardness():
    meter = NegativeMeter(torch.tensor([0] * 50 + [1] * 50))
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    pool = F.normalize(torch.randn(100, 8, generator=g), dim=1)
    negs = Negatives(anchors=anchors, positives=anchors, anchor_ids=torch.arange(50), pool=pool,
                     pool_ids=torch.arange(100), mask=torch.arange(100)[None].repeat(50, 1) >= 50)
    meter.observe(negs, negs.similarity())
    d = meter.deciles()
    assert len(d["edges"]) == 10 and d["edges"] == sorted(d["edges"])
    assert all(f == 0.0 for f in d["fnr"])  # every selected pair is label 0 vs 1


def test_knn_top1_weighted_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ty = torch.tensor([0, 0, 1])
    query = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    assert knn_top1(train, ty, query, torch.tensor([0, 1]), 2, k=1) == 1.0
    assert knn_top1(train, ty, query, torch.tensor([1, 0]), 2, k=1) == 0.0


def test_random_fnr_matches_sum_of_squared_class_priors():
    """Uniform sampling without the anchor's own instance has expected FNR
    sum_c p_c (n_c - 1) / (N - 1) (~ sum_c p_c^2). Tolerance: 4 binomial standard errors, counting
    each of the steps x K uniform draws as one trial (the B anchors of a step share the draws)."""
    cfg = build_config("digits", "random", seed=1, budget=BudgetConfig("samples", 25_600),
                       sets={"eval.linear_epochs": "1"})
    r = run(cfg, track=False)
    import suites

    y = suites.create("digits").load().train.y
    n = len(y)
    counts = torch.bincount(y).double()
    expected = float((counts / n * (counts - 1) / (n - 1)).sum())
    trials = r.metrics["steps"] * cfg.strategy_cfg.K
    tol = 4 * math.sqrt(expected * (1 - expected) / trials)
    assert abs(r.metrics["fnr"] - expected) < tol, (r.metrics["fnr"], expected, tol)
    assert abs(expected - float(((counts / n) ** 2).sum())) < 1e-3
