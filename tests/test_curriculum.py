"""curriculum: both rankings' windows against loop references (the sampled one replaying the same
generator draws); at budget fraction 1 it selects what its hardest fixed setting selects, at
fraction 0 the easiest window; the sampled window's realised fraction against its order-statistic
distribution; the shared similarities; weights and logged metrics."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import Table, make_ctx

from negbench import strategies
from negbench.strategies import StepContext, StrategyError
from negbench.strategies.curriculum import (
    Curriculum,
    CurriculumConfig,
    Q,
    quantise,
    schedule,
    window_bounds,
)
from negbench.strategies.kernels import in_batch_negatives, ordered_bits


# --------------------------------------------------------------------------- helpers
def unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64),
                                         dim=1)


def ctx_for(ids: torch.Tensor, fraction: float, charges: list | None = None,
            temperature: float = 0.2) -> StepContext:
    return make_ctx(ids, Table(100, 4), fraction=fraction, mining=charges,
                    temperature=temperature)


def batch(b: int, d: int, seed: int, repeat: bool = False):
    g = torch.Generator().manual_seed(seed)
    q, k = unit(b, d, g), unit(b, d, g)
    ids = torch.randperm(max(100, b), generator=g)[:b]
    if repeat:  # repeated instances: anchors then have different numbers of negatives
        ids[1] = ids[0]
        ids[4] = ids[3]
        ids[5] = ids[3]
    return q, k, ids


RANKINGS = ["sample", "exact"]


def run(cfg: CurriculumConfig, q, k, ids, fraction: float, **kw):
    s = Curriculum(cfg, dim=q.shape[1], n_train=100)
    return s, s.select(q, k, ctx_for(ids, fraction, **kw))


def reference_window(z, valid, width: float, p: float):
    """Loops: each anchor's valid negatives ranked least similar first (ties by row), the window
    of m = clamp(ceil(width n), 1, n) ranks from round(p (n - m)), halves up, with width and p
    quantised to 1/Q as the strategy documents."""
    w, pq = Fraction(round(width * Q), Q), Fraction(round(p * Q), Q)
    out = set()
    for a in range(z.shape[0]):
        negs = []
        for j in range(z.shape[0]):
            if valid[a][j]:
                s = sum(float(x) * float(y) for x, y in zip(z[a], z[j], strict=True))
                negs.append((s, j))
        negs.sort()
        n = len(negs)
        m = min(max(math.ceil(w * n), 1), n)
        lo = math.floor(pq * (n - m) + Fraction(1, 2))
        out |= {(a, j) for _, j in negs[lo:lo + m]}
    return out


def dot(x, y) -> float:
    return sum(float(a) * float(b) for a, b in zip(x, y, strict=True))


def replay_columns(pool: int, s: int, seed: int = 0) -> list[int]:
    """The columns the sampled ranking draws: one randperm from make_ctx's generator."""
    if pool <= s:
        return list(range(pool))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(pool, generator=g)[:s].tolist()


def reference_sampled_window(z, valid, width: float, p: float, cols: list[int]):
    """Loops: for each anchor, its valid sampled similarities sorted ascending (v), n_s of them,
    the window rule on n_s giving (lo, hi), t_lo = v[lo] (-inf if lo <= 0), t_hi = v[hi] (+inf
    if hi >= n_s), and every valid candidate of the row with t_lo <= s < t_hi; an anchor without
    valid sampled candidates keeps all its negatives."""
    w, pq = Fraction(round(width * Q), Q), Fraction(round(p * Q), Q)
    out = set()
    for a in range(z.shape[0]):
        row = [dot(z[a], z[j]) for j in range(z.shape[0])]
        v = sorted(row[j] for j in cols if valid[a][j])
        n_s = len(v)
        t_lo, t_hi = -math.inf, math.inf
        if n_s > 0:
            m = min(max(math.ceil(w * n_s), 1), n_s)
            lo = math.floor(pq * (n_s - m) + Fraction(1, 2))
            if lo > 0:
                t_lo = v[lo]
            if lo + m < n_s:
                t_hi = v[lo + m]
        out |= {(a, j) for j in range(z.shape[0]) if valid[a][j] and t_lo <= row[j] < t_hi}
    return out


def pairs(mask: torch.Tensor) -> set:
    return {(int(a), int(n)) for a, n in zip(*torch.where(mask), strict=True)}


# --------------------------------------------------------------------------- the window
@pytest.mark.parametrize("schedule_name", ["linear", "cosine", "step"])
@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("width", [0.1, 0.3, 0.5, 1.0])
def test_exact_window_equals_loop_reference(schedule_name, fraction, width):
    q, k, ids = batch(9, 4, seed=int(fraction * 100), repeat=fraction > 0.5)
    cfg = CurriculumConfig(width=width, schedule=schedule_name, stages=3, ranking="exact")
    s, negs = run(cfg, q, k, ids, fraction)
    base = in_batch_negatives(q, k, ids)
    want = reference_window(base.anchors, base.mask.tolist(), width, s.position(fraction))
    assert pairs(negs.mask) == want


@pytest.mark.parametrize("rank_sample", [1, 2, 7, 18])
@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("width", [0.1, 0.3, 0.5, 1.0])
def test_sampled_window_equals_loop_reference(rank_sample, fraction, width):
    """S < P samples (S = 1 and 2 leave some anchors without a valid sampled candidate);
    S >= P takes every column with no draw."""
    seed = int(fraction * 100) + rank_sample
    q, k, ids = batch(9, 4, seed=seed, repeat=seed % 2 == 1)
    cfg = CurriculumConfig(width=width, schedule="cosine", rank_sample=rank_sample)
    s, negs = run(cfg, q, k, ids, fraction)
    base = in_batch_negatives(q, k, ids)
    cols = replay_columns(18, rank_sample)
    want = reference_sampled_window(base.anchors, base.mask.tolist(), width,
                                    s.position(fraction), cols)
    assert pairs(negs.mask) == want


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_ordered_bits_sort_like_the_floats(dtype):
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-3, -1e-3, 2.0, -2.0, 2.0])
    x = torch.cat([torch.randn(500, generator=g) * 3, special]).to(dtype)  # (N,)
    o = ordered_bits(x)
    assert o.dtype.itemsize == x.dtype.itemsize and not o.is_floating_point()
    assert torch.equal(ordered_bits(o).view(dtype), x)  # its own inverse
    back = ordered_bits(o.sort().values).view(dtype)
    assert torch.equal(back, x.sort().values)
    # strictly in the floats' order, apart from -0.0 just below +0.0
    lt = o[:, None] < o[None, :]
    flt = x[:, None] < x[None, :]
    zeros = (x == 0)[:, None] & (x == 0)[None, :]
    assert torch.equal(lt & ~zeros, flt)


def test_sampled_window_with_every_column_is_the_exact_window():
    """P <= S: the thresholds are the exact window's own bounds (no ties in random inputs)."""
    for seed in range(4):
        q, k, ids = batch(20, 6, seed, repeat=seed == 3)
        for f in (0.0, 0.3, 0.8, 1.0):
            for width in (0.05, 0.4):
                _, a = run(CurriculumConfig(width=width, ranking="sample"), q, k, ids, f)
                _, b = run(CurriculumConfig(width=width, ranking="exact"), q, k, ids, f)
                assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("ranking", RANKINGS)
def test_fraction_one_selects_what_the_hardest_setting_selects(ranking):
    # rank_sample=7 < P = 20: the sampled ranking draws its columns (the same draws for both)
    kw = dict(width=0.3, beta_max=0.5, ranking=ranking, rank_sample=7)
    hardest = CurriculumConfig(p_start=1.0, p_end=1.0, **kw)
    for name in ("linear", "cosine", "step"):
        cfg = CurriculumConfig(schedule=name, **kw)
        for seed in range(3):
            q, k, ids = batch(10, 5, seed, repeat=seed == 2)
            _, at_one = run(cfg, q, k, ids, 1.0)
            for f in (0.0, 0.4):  # the hardest setting is fixed: any fraction
                _, hard = run(hardest, q, k, ids, f)
                assert torch.equal(at_one.mask, hard.mask)
                assert torch.equal(at_one.weights, hard.weights)
            _, half = run(cfg, q, k, ids, 0.5)
            assert not torch.equal(half.mask, at_one.mask)  # the identity is not vacuous


@pytest.mark.parametrize("ranking", RANKINGS)
def test_hardest_setting_takes_the_most_similar(ranking):
    q, k, ids = batch(10, 4, seed=4)
    cfg = CurriculumConfig(width=0.25, p_start=1.0, p_end=1.0, ranking=ranking)
    _, negs = run(cfg, q, k, ids, 0.3)
    sim = negs.anchors @ negs.pool.T
    base = in_batch_negatives(q, k, ids).mask
    for a in range(sim.shape[0]):
        sel, rest = sim[a][negs.mask[a]], sim[a][base[a] & ~negs.mask[a]]
        assert len(sel) == math.ceil(0.25 * 18)
        assert sel.min() > rest.max()


@pytest.mark.parametrize("ranking", RANKINGS)
def test_fraction_zero_selects_the_easiest_window(ranking):
    q, k, ids = batch(10, 4, seed=5)
    for name in ("linear", "cosine", "step"):
        _, negs = run(CurriculumConfig(width=0.4, schedule=name, ranking=ranking), q, k, ids, 0.0)
        sim = negs.anchors @ negs.pool.T
        base = in_batch_negatives(q, k, ids).mask
        for a in range(sim.shape[0]):
            sel, rest = sim[a][negs.mask[a]], sim[a][base[a] & ~negs.mask[a]]
            assert len(sel) == math.ceil(0.4 * 18)
            assert sel.max() < rest.min()  # the m least similar negatives


@pytest.mark.parametrize("ranking", RANKINGS)
def test_window_moves_toward_the_hard_end(ranking):
    q, k, ids = batch(40, 4, seed=6)  # P = 80 > rank_sample = 16: the sampled ranking samples
    means, lows, highs = [], [], []
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        cfg = CurriculumConfig(width=0.2, ranking=ranking, rank_sample=16)
        _, negs = run(cfg, q, k, ids, f)
        sim = negs.anchors @ negs.pool.T
        means.append(float(sim[negs.mask].mean()))
        per_anchor = torch.where(negs.mask, sim, math.nan)
        lows.append(per_anchor.nan_to_num(math.inf).amin(1))
        highs.append(per_anchor.nan_to_num(-math.inf).amax(1))
    assert means == sorted(means) and means[0] < means[-1]
    for i in range(4):  # every anchor's window moves up: its bounds never go down
        assert torch.all(lows[i + 1] >= lows[i]) and torch.all(highs[i + 1] >= highs[i])
    base = in_batch_negatives(q, k, ids)
    sim = base.anchors @ base.pool.T
    valid_sim = torch.where(base.mask, sim, math.nan)
    assert torch.equal(lows[0], valid_sim.nan_to_num(math.inf).amin(1))  # p = 0: the easiest
    assert torch.equal(highs[-1], valid_sim.nan_to_num(-math.inf).amax(1))  # p = 1: the hardest


@pytest.mark.parametrize("ranking", RANKINGS)
def test_full_width_equals_in_batch(ranking):
    q, k, ids = batch(8, 4, seed=7, repeat=True)
    for f in (0.0, 0.6):
        _, negs = run(CurriculumConfig(width=1.0, ranking=ranking, rank_sample=3), q, k, ids, f)
        assert torch.equal(negs.mask, in_batch_negatives(q, k, ids).mask)
        assert negs.weights is None


def test_hands_its_product_to_the_objective_instead_of_charging_it():
    q, k, ids = batch(6, 3, seed=0)
    charges: list[int] = []
    run(CurriculumConfig(), q, k, ids, 0.5, charges=charges)
    assert charges == []  # the (A, P) product is the objective's (negs.sim), counted there


@pytest.mark.parametrize("width", [0.1, 0.5])
@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_sampled_window_holds_about_width_of_the_row(width, position):
    """The realised fraction of each row in its sampled window, against its distribution.

    Given n_s valid sampled columns (a simple random sample of the anchor's n valid candidates),
    let R_j be the population rank (1-based) of the j-th smallest sampled value. The window
    [v_lo, v_hi) holds R_{hi+1} - R_{lo+1} candidates, at the easy end (t_lo = -inf) R_{hi+1} - 1,
    at the hard end n + 1 - R_{lo+1}; by the exchangeability of the sample's spacings each is
    distributed as R_j with j = m (j = m + 1 at the easy end), shifted by -1 at the easy end.
    R_j has mean j (n+1) / (n_s+1) and variance j (n_s-j+1) (n+1) (n-n_s) / ((n_s+1)^2 (n_s+2)):
    an sd of about sqrt(q (1-q) / S) of the row, as the module's NOTE says. Tolerances, per
    standardised count z_a (512 anchors): every |z_a| <= 7 (a per-anchor bound, whatever the
    anchors' dependence; the counts are Beta-binomial-like, observed max ~5 for m = 7);
    |mean z| <= 4 / sqrt(A) and sd(z) within 15% of 1 (the rows of random directions in D = 32
    rank the shared columns almost independently; the sd of a 512-sample sd is ~3%). The mean
    fraction also lies within 2/S + 4 sd/sqrt(A) of the width: the O(1/S) bias of ceil(width n_s)
    and of the easy end's extra spacing, plus noise."""
    b, s_cols = 256, 64
    q, k, ids = batch(b, 32, seed=11 + int(10 * width + 3 * position))
    cfg = CurriculumConfig(width=width, p_start=position, p_end=position, rank_sample=s_cols)
    _, negs = run(cfg, q, k, ids, 0.5)
    base = in_batch_negatives(q, k, ids)
    cols = torch.tensor(replay_columns(2 * b, s_cols))
    n = base.mask.sum(1).double()  # (A,)
    ns = base.mask[:, cols].sum(1)  # (A,)
    lo, hi = window_bounds(ns, quantise(width), quantise(position))
    easy = ((lo <= 0) & (hi < ns)).double()
    j = (hi - lo).double() + easy  # the order statistic each count is distributed as
    nsd = ns.double()
    mean = j * (n + 1) / (nsd + 1) - easy
    var = j * (nsd - j + 1) * (n + 1) * (n - nsd) / ((nsd + 1) ** 2 * (nsd + 2))
    got = negs.mask.sum(1).double()  # (A,)
    z = (got - mean) / var.sqrt()
    a = z.shape[0]
    assert z.abs().max() <= 7.0
    assert abs(float(z.mean())) <= 4.0 / math.sqrt(a)
    assert 0.85 <= float(z.std()) <= 1.15
    sd = math.sqrt(width * (1 - width) / s_cols)
    frac = float((got / n).mean())
    assert abs(frac - width) <= 2.0 / s_cols + 4.0 * sd / math.sqrt(a)


@pytest.mark.parametrize("ranking", RANKINGS)
def test_sim_is_the_similarity_with_gradients(ranking):
    g = torch.Generator().manual_seed(3)
    q = unit(12, 5, g).requires_grad_()
    k = unit(12, 5, g).requires_grad_()
    ids = torch.arange(12)
    _, negs = run(CurriculumConfig(width=0.3, ranking=ranking, rank_sample=6, beta_max=1.0),
                  q, k, ids, 0.4)
    z = torch.cat([q, k])
    torch.testing.assert_close(negs.sim, z @ z.T)
    assert negs.sim.requires_grad and not negs.mask.requires_grad
    assert not negs.weights.requires_grad  # computed from the detached copy
    negs.sim.sum().backward()
    torch.testing.assert_close(q.grad, 2 * z.sum(0).expand(12, 5).detach())


# --------------------------------------------------------------------------- weights
@pytest.mark.parametrize("ranking", RANKINGS)
def test_hcl_weights_mean_one_and_annealed(ranking):
    q, k, ids = batch(8, 4, seed=8)
    cfg = CurriculumConfig(width=0.5, beta_max=1.5, schedule="linear", ranking=ranking,
                           rank_sample=5)
    _, negs = run(cfg, q, k, ids, 0.0, temperature=0.5)
    assert torch.equal(negs.weights, negs.mask.double())  # beta(0) = 0: unit weights
    f, tau = 0.6, 0.5
    s, negs = run(cfg, q, k, ids, f, temperature=tau)
    beta = 1.5 * s.position(f)
    sim = negs.anchors @ negs.pool.T
    w, sel = negs.weights, negs.mask
    assert torch.all(w[~sel] == 0)
    for a in range(sim.shape[0]):
        e = torch.exp(beta * sim[a][sel[a]] / tau)
        torch.testing.assert_close(w[a][sel[a]], e / e.mean())
        torch.testing.assert_close(w[a][sel[a]].mean(), torch.tensor(1.0, dtype=w.dtype))


# --------------------------------------------------------------------------- schedules, metric
def test_schedules():
    for name in ("linear", "cosine", "step"):
        assert schedule(name, 0.0, 4) == 0.0 and schedule(name, 1.0, 4) == 1.0
        vals = [schedule(name, i / 20, 4) for i in range(21)]
        assert vals == sorted(vals)
    assert schedule("cosine", 0.5, 4) == pytest.approx(0.5)
    assert [schedule("step", f, 4) for f in (0.2, 0.3, 0.6, 0.8)] == [0, 1 / 3, 2 / 3, 1]
    assert schedule("linear", 1.7, 4) == 1.0  # clipped


def test_extra_metrics_report_the_window_of_the_last_fraction():
    q, k, ids = batch(6, 3, seed=1)
    s = Curriculum(CurriculumConfig(width=0.4, schedule="linear", beta_max=1.0), dim=3,
                   n_train=100)
    assert "curriculum_selected" not in s.extra_metrics()  # nothing selected yet
    s.select(q, k, ctx_for(ids, 0.5))
    got = s.extra_metrics()
    assert got["curriculum_window_lo"] == pytest.approx(0.3)
    assert got["curriculum_window_hi"] == pytest.approx(0.7)
    assert got["curriculum_beta"] == pytest.approx(0.5)
    s.select(q, k, ctx_for(ids, 1.0))
    got = s.extra_metrics()
    assert (got["curriculum_window_lo"], got["curriculum_window_hi"]) == pytest.approx((0.6, 1.0))


@pytest.mark.parametrize("ranking", RANKINGS)
def test_extra_metrics_report_the_realised_fraction(ranking):
    q, k, ids = batch(30, 4, seed=2, repeat=True)
    s = Curriculum(CurriculumConfig(width=0.3, ranking=ranking, rank_sample=10), dim=4,
                   n_train=100)
    negs = s.select(q, k, ctx_for(ids, 0.6))
    base = in_batch_negatives(q, k, ids).mask
    want = sum(int(negs.mask[a].sum()) / int(base[a].sum()) for a in range(60)) / 60
    assert s.extra_metrics()["curriculum_selected"] == pytest.approx(want, rel=1e-6)
    if ranking == "exact":  # exactly m = ceil(0.3 n) of each anchor's n negatives
        n = base.sum(1).tolist()
        assert want == pytest.approx(sum(math.ceil(0.3 * x) / x for x in n) / 60, rel=1e-12)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(width=0.0), dict(width=1.5), dict(schedule="exp"),
                                 dict(stages=1), dict(p_start=-0.1), dict(p_end=2.0),
                                 dict(beta_max=-1.0), dict(ranking="argsort"),
                                 dict(rank_sample=0), dict(rank_sample=2.5)])
def test_bad_config_raises(bad):
    with pytest.raises(StrategyError, match="curriculum"):
        CurriculumConfig(**bad)


def test_registered():
    assert strategies.get("curriculum") is Curriculum


@pytest.mark.parametrize("ranking", RANKINGS)
@pytest.mark.parametrize("rank_sample", [4, 64])
@pytest.mark.parametrize("beta_max", [0.0, 1.0])
def test_sync_free_on_the_meta_device(beta_max, rank_sample, ranking):
    """Meta tensors hold no data: any host read (.item(), bool(), nonzero, x[mask], .tolist())
    raises, so a step that runs here never syncs (rank_sample=4 < P draws columns)."""
    cfg = CurriculumConfig(beta_max=beta_max, rank_sample=rank_sample, ranking=ranking)
    s = Curriculum(cfg, dim=8, n_train=100).to("meta")
    q = torch.randn(6, 8, device="meta", requires_grad=True)
    ctx = StepContext(step=0, fraction=0.4, ids=torch.arange(6, device="meta"),
                      generator=torch.Generator(), n_train=100, encode=None,
                      encode_all=None)
    negs = s.select(q, q.detach(), ctx)
    negs.sim.masked_fill(~negs.mask, 0).sum().backward()
    assert negs.mask.device.type == "meta"
    assert (negs.weights is not None) == (beta_max > 0)
    assert "curriculum_selected" not in s.extra_metrics()  # no data to read on meta


def test_sort_rows_equals_a_per_row_sort():
    from negbench.strategies.curriculum import sort_rows

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31 - 1, (37, 11), generator=g, dtype=torch.int64)
    bits = bits.to(torch.int32)
    bits[0, :3] = torch.tensor([2**31 - 1, -(2**31), 0], dtype=torch.int32)  # the extremes
    bits[1] = 5  # ties
    assert torch.equal(sort_rows(bits), bits.sort(dim=1).values)
    wide = bits.to(torch.int64)
    assert torch.equal(sort_rows(wide), wide.sort(dim=1).values)
