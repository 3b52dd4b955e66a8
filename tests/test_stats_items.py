"""Per-item statistics: exact binomial intervals, McNemar, Holm and the hierarchical bootstrap,
against hand-computed values."""

from __future__ import annotations

import math

import pytest

from negbench.reports import stats


def test_clopper_pearson_matches_published_values():
    # R: binom.test(7, 10)$conf.int = 0.3475471 0.9332605
    low, high = stats.binomial_ci(7, 10)
    assert low == pytest.approx(0.3475471, abs=1e-6)
    assert high == pytest.approx(0.9332605, abs=1e-6)
    # the edges: 0 of n and n of n have a closed form, 1 - (alpha/2)^(1/n)
    assert stats.binomial_ci(0, 20)[0] == 0.0
    assert stats.binomial_ci(0, 20)[1] == pytest.approx(1 - 0.025 ** (1 / 20), abs=1e-12)
    assert stats.binomial_ci(20, 20)[0] == pytest.approx(0.025 ** (1 / 20), abs=1e-12)


def test_mcnemar_by_hand():
    # 1 item only a got right, 6 only b: n = 7 discordant, p = 2 (C(7,0) + C(7,1)) / 2^7
    a = [True] * 10 + [True] + [False] * 6 + [False] * 3
    b = [True] * 10 + [False] + [True] * 6 + [False] * 3
    t = stats.mcnemar(a, b)
    assert (t.a_only, t.b_only, t.n) == (1, 6, 20)
    assert t.p == pytest.approx(2 * 8 / 128)
    assert stats.mcnemar(a, a).p == 1.0
    # 0 against 5: p = 2 / 2^5
    assert stats.mcnemar([True] * 5, [False] * 5).p == pytest.approx(1 / 16)
    with pytest.raises(ValueError):
        stats.mcnemar([True], [True, False])


def test_mcnemar_on_a_large_test_split_does_not_overflow():
    """Past 1,030 discordant items C(m, i) and 2^m overflow a float (fashion-mnist's 10,000
    test items got there): the exact p stays exact, and close to the normal approximation."""
    def vectors(a_only: int, b_only: int) -> tuple[list[bool], list[bool]]:
        return ([True] * a_only + [False] * b_only, [False] * a_only + [True] * b_only)

    t = stats.mcnemar(*vectors(700, 800))
    z = (100 - 1) / math.sqrt(1500)  # continuity-corrected normal approximation: p ~ 0.0106
    normal = math.erfc(z / math.sqrt(2))
    assert t.discordant == 1500 and t.p == pytest.approx(normal, rel=0.1)
    assert stats.mcnemar(*vectors(600, 600)).p == 1.0
    assert 0.0 <= stats.mcnemar(*vectors(0, 1200)).p < 1e-300  # 2 / 2^1200: underflows


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = stats.holm([0.01, math.nan])
    assert out[0] == pytest.approx(0.01) and math.isnan(out[1])  # NaN is no comparison


def test_one_seed_interval_is_close_to_the_exact_one():
    correct = [True] * 340 + [False] * 20  # 94.4% of 360 items
    iv = stats.item_interval({0: correct})
    assert iv.mean == pytest.approx(340 / 360)
    lo, hi = iv.exact
    assert lo == pytest.approx(stats.binomial_ci(340, 360)[0])
    # the bootstrap's percentile interval and the exact one agree to about a point here
    assert abs(iv.low - lo) < 0.012 and abs(iv.high - hi) < 0.012
    assert iv.low < iv.mean < iv.high


def test_seeds_widen_the_interval():
    a = [True] * 300 + [False] * 60
    b = [True] * 340 + [False] * 20
    one = stats.item_interval({0: a})
    two = stats.item_interval({0: a, 1: b})  # seeds that disagree add their own variance
    assert two.high - two.low > one.high - one.low


def test_paired_items_one_seed_uses_mcnemar_and_detects_a_real_lead():
    base = [True] * 300 + [False] * 60
    better = [True] * 330 + [False] * 30  # right on 30 more items, wrong on none more
    t = stats.paired_items({0: better}, {0: base})
    assert t.test == "exact McNemar"
    assert t.mean_diff == pytest.approx(30 / 360)
    assert t.p == pytest.approx(2 / 2 ** 30)
    assert t.low > 0
    tiny = [True] * 302 + [False] * 58  # a lead of two items
    t2 = stats.paired_items({0: tiny}, {0: base})
    assert t2.p == pytest.approx(0.5) and t2.low <= 0 <= t2.high


def test_paired_items_several_seeds():
    base = {s: [True] * 300 + [False] * 60 for s in range(3)}
    same = {s: list(v) for s, v in base.items()}
    assert stats.paired_items(same, base).p == 1.0
    better = {s: [True] * 330 + [False] * 30 for s in range(3)}
    t = stats.paired_items(better, base)
    assert t.test.startswith("paired bootstrap") and t.p < 0.01 and t.low > 0


def test_detectable_difference():
    # z_{0.975} + z_{0.8} = 1.959964 + 0.841621 = 2.801585
    assert stats.detectable(0.01, 1) == pytest.approx(0.02801585, abs=1e-7)
    # Holm's strictest step over 9 comparisons: z_{1 - 0.025/9} = 2.773030
    assert stats.detectable(0.01, 9) == pytest.approx((2.7730 + 0.841621) * 0.01, abs=1e-5)
