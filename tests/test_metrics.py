"""The negative meter (FNR, weighted FNR, hardness, collisions, deciles), kNN and the random
strategy's FNR against its closed form on real digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.evaluate import knn_top1
from negbench.harness.metrics import NegativeMeter, false_negative_matrix
from negbench.harness.runner import run
from negbench.strategies import Negatives

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
    # no host values in the step
    assert out is None and meter.counts.device == meter.sums.device == LABELS.device
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


@pytest.mark.parametrize("suite,classes", [
    ("digits", 10), ("digits", 2),
    pytest.param("fashion-mnist", 5, marks=pytest.mark.slow),  # a width-64 CNN: about a minute
])
def test_random_fnr_matches_sum_of_squared_class_priors(suite, classes):
    """Uniform sampling without the anchor's own instance has expected FNR
    sum_c p_c (n_c - 1) / (N - 1) (~ sum_c p_c^2), over the ``suite.classes`` groups of the real
    training labels. Tolerance: 4 binomial standard errors, counting each of the steps x K
    uniform draws as one trial (the B anchors of a step share the draws)."""
    from negbench import suites

    if suites.create(suite).data_status() != "present":
        pytest.skip(f"{suite} data not installed")
    sets = {"eval.linear_epochs": "1", "suite.classes": str(classes)}
    cfg = build_config(suite, "random", seed=1, budget=BudgetConfig("samples", 25_600), sets=sets)
    r = run(cfg, track=False)
    data = suites.create(suite, suites.get(suite).Config(classes=classes)).load()
    assert data.n_classes == classes
    y = data.train.y
    n = len(y)
    counts = torch.bincount(y, minlength=classes).double()
    expected = float((counts / n * (counts - 1) / (n - 1)).sum())
    trials = r.metrics["steps"] * cfg.strategy_cfg.K
    tol = 4 * math.sqrt(expected * (1 - expected) / trials)
    assert abs(r.metrics["fnr"] - expected) < tol, (r.metrics["fnr"], expected, tol)
    assert abs(expected - float(((counts / n) ** 2).sum())) < 1e-3


def _reference_counts(negs, labels):
    """Loop-based reference of the meter's per-step counts: (pairs, fns, weight sum, weighted FN
    sum, hardness sum, collisions, per-bin (count, fn) of the first HIST_ANCHORS anchors)."""
    from negbench.harness.metrics import BINS, HIST_ANCHORS

    sel, sim = negs.selected(), negs.similarity()
    cid = negs.candidate_ids().expand(sel.shape)
    if negs.index is None:
        rows = torch.arange(negs.pool_size).expand(negs.num_anchors, -1)
    else:
        rows = negs.index
    if negs.extra_ids is not None:
        rows = torch.cat([rows, torch.full(negs.extra_ids.shape, negs.pool_size)], dim=1)
    wts = negs.candidate_weights()
    pairs = fns = coll = 0
    hard = w_sum = wfn_sum = 0.0
    hist = torch.zeros(2, BINS, dtype=torch.float64)
    for a in range(sel.shape[0]):
        la = int(labels[negs.anchor_ids[a]])
        for w in range(sel.shape[1]):
            c = int(cid[a, w])
            if c == int(negs.anchor_ids[a]) and int(rows[a, w]) >= negs.batch_views:
                coll += 1
            if not sel[a, w]:
                continue
            fn = c >= 0 and int(labels[c]) == la
            pairs, fns, hard = pairs + 1, fns + fn, hard + float(sim[a, w])
            wt = 1.0 if wts is None else float(wts[a, w])
            w_sum, wfn_sum = w_sum + wt, wfn_sum + wt * fn
            if a < HIST_ANCHORS:
                b = min(max(int((float(sim[a, w]) + 1.0) * (0.5 * BINS)), 0), BINS - 1)
                hist[0, b] += 1
                hist[1, b] += fn
    return pairs, fns, w_sum, wfn_sum, hard, coll, hist


def test_meter_matches_a_loop_reference_on_every_form():
    """Mask form, index form and extras, with padding ids (-1), own instances inside and past
    the batch views, and more anchors than the histogram takes: every count the meter keeps
    equals a plain loop's."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (40,), generator=g)
    for form in ("mask", "index", "mask+extra", "index+extra", "mask+weights"):
        a_n, p_n, d = 70, 24, 8
        anchors = F.normalize(torch.randn(a_n, d, generator=g), dim=1)
        pool = F.normalize(torch.randn(p_n, d, generator=g), dim=1)
        a_ids = torch.randint(0, 40, (a_n,), generator=g)
        p_ids = torch.randint(-1, 40, (p_n,), generator=g)
        p_ids[:5] = a_ids[:5]  # own instances inside the views (rows < 6)
        p_ids[20:23] = a_ids[10:13]  # and past them
        kw = dict(anchors=anchors, positives=anchors, anchor_ids=a_ids, pool=pool,
                  pool_ids=p_ids, batch_views=6)
        if form.startswith("mask"):
            kw["mask"] = torch.rand(a_n, p_n, generator=g) > 0.3
        else:
            kw["index"] = torch.randint(0, p_n, (a_n, 9), generator=g)
        if form.endswith("weights"):
            kw["weights"] = torch.rand(a_n, p_n, generator=g)
        if form.endswith("extra"):
            kw["extra"] = F.normalize(torch.randn(a_n, 3, d, generator=g), dim=2)
            kw["extra_ids"] = torch.randint(-1, 40, (a_n, 3), generator=g)
            kw["extra_ids"][:4, 0] = a_ids[:4]
            kw["extra_mask"] = torch.rand(a_n, 3, generator=g) > 0.5
        negs = Negatives(**kw)
        meter = NegativeMeter(labels)
        meter.observe(negs, negs.similarity())
        pairs, fns, w_sum, wfn_sum, hard, coll, hist = _reference_counts(negs, labels)
        tot = meter._totals().tolist()  # pairs, FN, W, WFN, similarity sum, collisions, anchors
        assert (tot[0], tot[1]) == (pairs, fns), form
        assert math.isclose(tot[2], w_sum, rel_tol=1e-5), form
        assert math.isclose(tot[3], wfn_sum, rel_tol=1e-5), form
        assert (tot[5], tot[6]) == (coll, a_n), form
        assert coll > 0, form  # the case is exercised
        assert math.isclose(tot[4], hard, rel_tol=1e-5), form
        h = meter.hist.view(2, -1)  # (not FN, FN) per bin
        assert torch.equal(h.sum(0), hist[0]) and torch.equal(h[1], hist[1]), form
