"""curriculum: the window against a loop reference; at budget fraction 1 it selects what its
hardest fixed setting selects, at fraction 0 the easiest window; weights and logged window."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import Table, make_ctx

import strategies
from strategies import StepContext, StrategyError
from strategies.curriculum import Curriculum, CurriculumConfig, Q, schedule
from strategies.in_batch import in_batch_negatives


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
    ids = torch.randperm(100, generator=g)[:b]
    if repeat:  # repeated instances: anchors then have different numbers of negatives
        ids[1] = ids[0]
        ids[4] = ids[3]
        ids[5] = ids[3]
    return q, k, ids


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


def pairs(mask: torch.Tensor) -> set:
    return {(int(a), int(n)) for a, n in zip(*torch.where(mask), strict=True)}


# --------------------------------------------------------------------------- the window
@pytest.mark.parametrize("schedule_name", ["linear", "cosine", "step"])
@pytest.mark.parametrize("fraction", [0.0, 0.13, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("width", [0.1, 0.3, 0.5, 1.0])
def test_window_equals_loop_reference(schedule_name, fraction, width):
    q, k, ids = batch(9, 4, seed=int(fraction * 100), repeat=fraction > 0.5)
    cfg = CurriculumConfig(width=width, schedule=schedule_name, stages=3)
    s, negs = run(cfg, q, k, ids, fraction)
    base = in_batch_negatives(q, k, ids)
    want = reference_window(base.anchors, base.mask.tolist(), width, s.position(fraction))
    assert pairs(negs.mask) == want


def test_fraction_one_selects_what_the_hardest_setting_selects():
    hardest = CurriculumConfig(width=0.3, p_start=1.0, p_end=1.0, beta_max=0.5)
    for name in ("linear", "cosine", "step"):
        cfg = CurriculumConfig(width=0.3, schedule=name, beta_max=0.5)
        for seed in range(3):
            q, k, ids = batch(10, 5, seed, repeat=seed == 2)
            _, at_one = run(cfg, q, k, ids, 1.0)
            for f in (0.0, 0.4):  # the hardest setting is fixed: any fraction
                _, hard = run(hardest, q, k, ids, f)
                assert torch.equal(at_one.mask, hard.mask)
                assert torch.equal(at_one.weights, hard.weights)


def test_hardest_setting_takes_the_most_similar():
    q, k, ids = batch(10, 4, seed=4)
    _, negs = run(CurriculumConfig(width=0.25, p_start=1.0, p_end=1.0), q, k, ids, 0.3)
    sim = negs.anchors @ negs.pool.T
    base = in_batch_negatives(q, k, ids).mask
    for a in range(sim.shape[0]):
        sel, rest = sim[a][negs.mask[a]], sim[a][base[a] & ~negs.mask[a]]
        assert len(sel) == math.ceil(0.25 * 18)
        assert sel.min() > rest.max()


def test_fraction_zero_selects_the_easiest_window():
    q, k, ids = batch(10, 4, seed=5)
    for name in ("linear", "cosine", "step"):
        _, negs = run(CurriculumConfig(width=0.4, schedule=name), q, k, ids, 0.0)
        sim = negs.anchors @ negs.pool.T
        base = in_batch_negatives(q, k, ids).mask
        for a in range(sim.shape[0]):
            sel, rest = sim[a][negs.mask[a]], sim[a][base[a] & ~negs.mask[a]]
            assert len(sel) == math.ceil(0.4 * 18)
            assert sel.max() < rest.min()  # the m least similar negatives


def test_window_moves_toward_the_hard_end():
    q, k, ids = batch(12, 4, seed=6)
    means = []
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, negs = run(CurriculumConfig(width=0.2), q, k, ids, f)
        sim = negs.anchors @ negs.pool.T
        means.append(float(sim[negs.mask].mean()))
    assert means == sorted(means) and means[0] < means[-1]


def test_full_width_equals_in_batch():
    q, k, ids = batch(8, 4, seed=7, repeat=True)
    for f in (0.0, 0.6):
        _, negs = run(CurriculumConfig(width=1.0), q, k, ids, f)
        assert torch.equal(negs.mask, in_batch_negatives(q, k, ids).mask)
        assert negs.weights is None


def test_charges_the_ranking_search():
    q, k, ids = batch(6, 3, seed=0)
    charges: list[int] = []
    run(CurriculumConfig(), q, k, ids, 0.5, charges=charges)
    assert charges == [12 * 12 * 3]


# --------------------------------------------------------------------------- weights
def test_hcl_weights_mean_one_and_annealed():
    q, k, ids = batch(8, 4, seed=8)
    cfg = CurriculumConfig(width=0.5, beta_max=1.5, schedule="linear")
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
    s.select(q, k, ctx_for(ids, 0.5))
    got = s.extra_metrics()
    assert got["curriculum_window_lo"] == pytest.approx(0.3)
    assert got["curriculum_window_hi"] == pytest.approx(0.7)
    assert got["curriculum_beta"] == pytest.approx(0.5)
    s.select(q, k, ctx_for(ids, 1.0))
    got = s.extra_metrics()
    assert (got["curriculum_window_lo"], got["curriculum_window_hi"]) == pytest.approx((0.6, 1.0))


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(width=0.0), dict(width=1.5), dict(schedule="exp"),
                                 dict(stages=1), dict(p_start=-0.1), dict(p_end=2.0),
                                 dict(beta_max=-1.0)])
def test_bad_config_raises(bad):
    with pytest.raises(StrategyError, match="curriculum"):
        CurriculumConfig(**bad)


def test_registered():
    assert strategies.get("curriculum") is Curriculum


@pytest.mark.parametrize("beta_max", [0.0, 1.0])
def test_sync_free_on_the_meta_device(beta_max):
    """Meta tensors hold no data: any host read (.item(), bool(), nonzero, x[mask], .tolist())
    raises, so a step that runs here never syncs."""
    s = Curriculum(CurriculumConfig(beta_max=beta_max), dim=8, n_train=100).to("meta")
    q = torch.randn(6, 8, device="meta", requires_grad=True)
    ctx = StepContext(step=0, fraction=0.4, ids=torch.arange(6, device="meta"),
                      generator=torch.Generator(), n_train=100, encode=None, encode_all=None)
    negs = s.select(q, q.detach(), ctx)
    (negs.anchors @ negs.pool.T).masked_fill(~negs.mask, 0).sum().backward()
    assert negs.mask.device.type == "meta"
    assert (negs.weights is not None) == (beta_max > 0)
