"""Representation health: alignment, uniformity and RankMe against loop references and their
known values; the verdict rule on hand-made figures."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from negbench.harness import health


def _loop_alignment(x, y):
    x, y = F.normalize(x.double(), dim=1), F.normalize(y.double(), dim=1)
    return sum(float(((x[i] - y[i]) ** 2).sum()) for i in range(len(x))) / len(x)


def _loop_uniformity(x):
    x = F.normalize(x.double(), dim=1)
    terms = [math.exp(-2 * float(((x[i] - x[j]) ** 2).sum()))
             for i, j in itertools.combinations(range(len(x)), 2)]
    return math.log(sum(terms) / len(terms))


def _loop_rankme(z):
    s = [float(v) for v in torch.linalg.svdvals(z.double())]
    total = sum(s)
    return math.exp(-sum(v / total * math.log(v / total) for v in s if v > 0))


def test_against_loop_references():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    assert health.alignment(x, y) == pytest.approx(_loop_alignment(x, y), rel=1e-5)
    assert health.uniformity(x) == pytest.approx(_loop_uniformity(x), rel=1e-9)
    z = torch.randn(30, 12, generator=g) @ torch.randn(12, 12, generator=g)
    assert health.rankme(z) == pytest.approx(_loop_rankme(z), rel=1e-9)


def test_known_values():
    same = torch.ones(50, 16)
    assert health.uniformity(same) == pytest.approx(0.0, abs=1e-12)  # collapsed: 0
    assert health.alignment(same, same) == pytest.approx(0.0, abs=1e-12)
    assert health.rankme(same) == pytest.approx(1.0, abs=1e-6)  # one direction
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64))
    assert health.rankme(q[:10]) == pytest.approx(10.0, rel=1e-9)  # orthonormal set: its size
    e = torch.eye(6)  # antipodal-free orthonormal unit vectors: every pair at ||a-b||^2 = 2
    assert health.uniformity(e) == pytest.approx(-4.0, abs=1e-9)
    assert health.alignment(e, -e) == pytest.approx(4.0, abs=1e-6)  # opposite views: maximum


def test_a_diverged_encoder_measures_nan_not_an_error():
    bad = torch.full((8, 4), float("nan"))
    assert math.isnan(health.rankme(bad))
    assert math.isnan(health.uniformity(bad)) and math.isnan(health.alignment(bad, bad))
    assert health.verdict({"uniform": math.nan, "rankme": math.nan})[0] == "ok"  # no evidence


def test_uniformity_is_exact_where_the_mean_of_exp_underflows():
    x = torch.eye(4) * 1.0
    assert health.uniformity(x, t=400.0) == pytest.approx(-800.0, abs=1e-9)


@pytest.mark.parametrize("metrics,expect", [
    ({"uniform": -0.02, "rankme": 9.0, "hardness": 0.5, "knn_acc": 0.9, "floor_knn_acc": 0.5},
     "collapsed"),
    ({"uniform": -2.0, "rankme": 1.1, "hardness": 0.5, "knn_acc": 0.9, "floor_knn_acc": 0.5},
     "collapsed"),
    ({"uniform": -0.3, "rankme": 9.0, "hardness": 0.99, "knn_acc": 0.9, "floor_knn_acc": 0.5},
     "collapsed"),
    ({"uniform": -3.0, "rankme": 9.0, "hardness": 0.99, "knn_acc": 0.9, "floor_knn_acc": 0.5},
     "ok"),  # hard by design in a healthy space
    ({"uniform": -2.0, "rankme": 9.0, "hardness": 0.5, "knn_acc": 0.39, "floor_knn_acc": 0.40},
     "degraded"),
    # a fall in RankMe alone is no degradation (supervised features fold onto their classes)
    ({"uniform": -2.0, "rankme": 2.0, "hardness": 0.5, "knn_acc": 0.9, "floor_knn_acc": 0.5,
      "floor_rankme": 20.0}, "ok"),
    ({"uniform": -2.0, "rankme": 9.0, "hardness": 0.5, "knn_acc": 0.9, "floor_knn_acc": 0.5,
      "floor_rankme": 20.0}, "ok"),
    # the linear probe under its floor while kNN beats its own (fashion-mnist's hcl)
    ({"uniform": -3.7, "rankme": 327.0, "hardness": 0.07, "knn_acc": 0.8638,
      "floor_knn_acc": 0.8305, "linear_acc": 0.8478, "floor_linear_acc": 0.8642}, "degraded"),
    ({"uniform": -3.7, "rankme": 327.0, "hardness": 0.07, "knn_acc": 0.8638,
      "floor_knn_acc": 0.8305, "linear_acc": 0.8650, "floor_linear_acc": 0.8642}, "ok"),
    ({"knn_acc": 0.9}, "ok"),  # missing figures take no part
    # an encoder whose untrained projections already sit on one point has lost nothing
    ({"uniform": -0.02, "rankme": 30.0, "hardness": 0.97, "knn_acc": 0.97,
      "floor_knn_acc": 0.94, "floor_uniform": -0.002, "floor_rankme": 40.0}, "ok"),
    ({"uniform": -0.02, "rankme": 30.0, "hardness": 0.5, "knn_acc": 0.90,
      "floor_knn_acc": 0.94, "floor_uniform": -0.002, "floor_rankme": 40.0}, "degraded"),
    # ... but one that started spread and ends on one point collapsed
    ({"uniform": -0.02, "rankme": 30.0, "hardness": 0.5, "knn_acc": 0.9,
      "floor_knn_acc": 0.4, "floor_uniform": -2.1, "floor_rankme": 60.0}, "collapsed"),
])
def test_verdict_rule(metrics, expect):
    v, reason = health.verdict(metrics)
    assert v == expect, reason
    assert reason
