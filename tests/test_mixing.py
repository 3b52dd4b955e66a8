"""mixing (MoCHi, Kalantidis et al. 2020): the hardest-N selection and the mixing against a
loop-written reference (same generator draws), unit norm, detached synthesis, FNR accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

import strategies
from harness.metrics import NegativeMeter, false_negative_matrix
from harness.objectives import info_nce
from strategies import Negatives, StrategyError
from strategies.mixing import MixingConfig


# --------------------------------------------------------------------------- inputs
def ctx_for(ids: torch.Tensor, *, seed: int = 0, charges: dict | None = None):
    """conftest's context (mixing never encodes: the table is only a stand-in), with the mining
    and mixing charges collected in ``charges``."""
    mining: list = []
    ctx = make_ctx(ids, Table(int(ids.max()) + 1, 2), seed=seed, mining=mining)
    if charges is not None:
        charges["mining"] = mining
        charges["adv"] = []
        ctx.charge_adversary = charges["adv"].append
    return ctx


def unit_pair(b: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    k = F.normalize(q + torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    ids = torch.randperm(10 * b, generator=g)[:b]
    return q, k, ids


def select(cfg, q, k, ids, seed=0, charges=None):
    strat = strategies.create("mixing", cfg, dim=q.shape[1], n_train=int(ids.max()) + 1)
    negs = strat.select(q, k, ctx_for(ids, seed=seed, charges=charges))
    strat.check()
    return negs


# --------------------------------------------------------------------------- loop reference
def reference(q, k, ids, n_hard, s, s2, seed):
    """MoCHi written one anchor and one synthetic point at a time, replaying the generator draws
    in the order the module documents. Returns, per anchor, its mask row over the 2B views, its
    synthetic vectors, their sources and source weights."""
    b = q.shape[0]
    z = torch.cat([q, k]).tolist()
    zid = torch.cat([ids, ids]).tolist()
    p = 2 * b
    n = min(n_hard, p - 2)
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (p, s), generator=g)
    off = torch.randint(max(n - 1, 1), (p, s), generator=g)
    alpha = torch.rand((p, s), generator=g, dtype=torch.float64)
    jq = torch.randint(n, (p, s2), generator=g)
    beta = 0.5 * torch.rand((p, s2), generator=g, dtype=torch.float64)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    def normalize(u):
        norm = math.sqrt(sum(x * x for x in u))
        return [x / norm for x in u]

    out = []
    for a in range(p):
        base = [c for c in range(p) if zid[c] != zid[a]]
        hard = sorted(base, key=lambda c: -dot(z[a], z[c]))[:n]  # noqa: B023
        row, vecs, srcs, ws = [zid[c] != zid[a] for c in range(p)], [], [], []
        for t in range(s):
            ii = int(i[a, t])
            jj = (ii + 1 + int(off[a, t])) % n if n >= 2 else ii
            al = float(alpha[a, t])
            ni, nj = z[hard[ii]], z[hard[jj]]
            vecs.append(normalize([al * x + (1 - al) * y for x, y in zip(ni, nj, strict=True)]))
            srcs.append([zid[hard[ii]], zid[hard[jj]]])
            ws.append([al, 1 - al])
        for t in range(s2):
            be = float(beta[a, t])
            nj = z[hard[int(jq[a, t])]]
            vecs.append(normalize([be * x + (1 - be) * y for x, y in zip(z[a], nj, strict=True)]))
            srcs.append([zid[a], zid[hard[int(jq[a, t])]]])
            ws.append([be, 1 - be])
        out.append((row, vecs, srcs, ws))
    return out


@pytest.mark.parametrize("b,d,n_hard,s,s2,seed", [
    (5, 4, 3, 4, 3, 0),
    (6, 3, 4, 5, 0, 1),
    (4, 5, 100, 3, 2, 2),  # N capped at the 2B-2 real negatives
    (3, 2, 1, 2, 2, 3),  # N = 1: a pair mix is its single parent
    (5, 3, 4, 0, 0, 4),  # no synthesis
])
def test_selection_and_mixing_match_loop_reference(b, d, n_hard, s, s2, seed):
    q, k, ids = unit_pair(b, d, seed)
    negs = select(MixingConfig(N=n_hard, s=s, s_prime=s2), q, k, ids, seed=seed + 10)
    ref = reference(q, k, ids, n_hard, s, s2, seed + 10)
    p, S = 2 * b, s + s2
    # the shared selection is in-batch's mask form; the mixes are per-anchor extras
    assert negs.index is None and negs.sources is None and negs.batch_views == p
    assert torch.equal(negs.pool, torch.cat([q, k]))
    assert torch.equal(negs.pool_ids, torch.cat([ids, ids]))
    assert negs.extra.shape == (p, S, d) and negs.width == p + S
    assert torch.equal(negs.extra_ids, torch.full((p, S), -1))
    assert bool(negs.extra_mask.all())
    for a, (row, vecs, srcs, ws) in enumerate(ref):
        assert negs.mask[a].tolist() == row
        if S:
            torch.testing.assert_close(negs.extra[a], torch.tensor(vecs, dtype=torch.float64),
                                       rtol=0, atol=1e-14)
            assert negs.extra_sources[a].tolist() == srcs
            torch.testing.assert_close(negs.extra_source_weights[a],
                                       torch.tensor(ws, dtype=torch.float64), rtol=0, atol=0)
    # what the harness reads: real columns stand for their own id with weight 1
    src, sw = negs.label_sources()  # (A, P + S, 2)
    assert src[:, :p, 0].tolist() == [torch.cat([ids, ids]).tolist()] * p
    assert (src[:, :p, 1] == -1).all() and sw[:, :p].tolist() == [[[1.0, 0.0]] * p] * p
    assert torch.equal(src[:, p:], negs.extra_sources)


def test_hardest_parents_are_the_hardest():
    # with N = 2 every pair mix has exactly the anchor's two hardest real negatives as parents
    q, k, ids = unit_pair(6, 4, 7)
    negs = select(MixingConfig(N=2, s=3, s_prime=0), q, k, ids)
    z = torch.cat([q, k])
    sim = (z @ z.T).masked_fill(ids.repeat(2)[:, None] == ids.repeat(2)[None, :], -2)
    top2 = sim.topk(2, dim=1).indices
    for a in range(12):
        want = sorted(ids.repeat(2)[top2[a]].tolist())
        for t in range(3):
            assert sorted(negs.extra_sources[a, t].tolist()) == want


def test_synthetic_negatives_have_unit_norm():
    q, k, ids = unit_pair(16, 8, 1, dtype=torch.float32)
    negs = select(MixingConfig(N=8, s=16, s_prime=8), q, k, ids)
    norms = negs.extra.norm(dim=-1)  # (A, S)
    assert norms.shape == (32, 24)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)
    assert negs.extra.dtype == torch.float32 and negs.extra_source_weights.dtype == torch.float32


def test_query_mixes_lean_towards_the_query():
    # beta < 0.5: h' is closer to its hard parent than to the query, yet harder than that parent
    q, k, ids = unit_pair(8, 6, 2)
    negs = select(MixingConfig(N=4, s=0, s_prime=5), q, k, ids)
    sim = negs.similarity()  # (A, P + s')
    assert sim.shape == (16, 16 + 5)
    base = sim[:, :16].masked_fill(~negs.mask, -2).amax(1)  # hardest real negative
    qmix = sim[:, 16:]
    w = negs.extra_source_weights  # (A, s', 2)
    assert (w[..., 0] < 0.5).all() and (w[..., 0] >= 0).all()
    assert (qmix.amax(1) >= base - 1e-12).all()


def test_no_gradient_through_the_synthesis():
    # d/dq of sum(anchor . synthetic) must be just the synthetic vectors of q's anchors: the
    # parents (other anchors' views, and the query itself for h') carry no gradient
    q, k, ids = unit_pair(5, 4, 3)
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    negs = select(MixingConfig(N=3, s=3, s_prime=3), q, k, ids)
    assert not negs.extra.requires_grad and negs.extra.grad_fn is None
    syn_part = negs.similarity()[:, 10:]  # (A, s + s')
    gq, gk = torch.autograd.grad(syn_part.sum(), (q, k))
    syn = negs.extra.detach()  # (A, s + s', D)
    torch.testing.assert_close(gq, syn[:5].sum(1), rtol=0, atol=1e-14)
    torch.testing.assert_close(gk, syn[5:].sum(1), rtol=0, atol=1e-14)
    # real negatives keep their gradient, as in in-batch: the real part of the loss's gradient
    # equals in-batch's
    real_part = negs.similarity()[:, :10].masked_fill(~negs.mask, 0)
    ib = strategies.create("in-batch", dim=4, n_train=50).select(q, k, ctx_for(ids))
    want = torch.autograd.grad(ib.similarity().masked_fill(~ib.mask, 0).sum(), (q, k))
    got = torch.autograd.grad(real_part.sum(), (q, k))
    for g_got, g_want in zip(got, want, strict=True):
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-14)
    loss = info_nce(negs, 0.2).loss
    gq_all, = torch.autograd.grad(loss, q)
    assert torch.isfinite(gq_all).all() and gq_all.abs().sum() > 0


def test_no_synthesis_equals_in_batch_loss():
    q, k, ids = unit_pair(7, 5, 4)
    mix = select(MixingConfig(N=4, s=0, s_prime=0), q, k, ids)
    assert mix.extra.shape == (14, 0, 5)
    ib = strategies.create("in-batch", dim=5, n_train=70).select(q, k, ctx_for(ids))
    torch.testing.assert_close(info_nce(mix, 0.3).loss, info_nce(ib, 0.3).loss,
                               rtol=1e-13, atol=1e-13)


def test_mixes_change_the_loss():
    # the extras do reach the objective: with them the loss is larger than in-batch's alone
    q, k, ids = unit_pair(7, 5, 4)
    mix = select(MixingConfig(N=4, s=3, s_prime=2), q, k, ids)
    ib = strategies.create("in-batch", dim=5, n_train=70).select(q, k, ctx_for(ids))
    assert info_nce(mix, 0.3).loss > info_nce(ib, 0.3).loss + 1e-3


# --------------------------------------------------------------------------- FNR accounting
def test_fnr_of_a_mix_is_its_same_label_weight():
    # a hand-made tiny case: two anchors of label 0 (ids 0 and 3); a real same-label negative, a
    # real other-label one, and one synthetic mix each: of the two real ones with alpha = 0.3 on
    # the same-label parent, and of the anchor with the other-label one (beta = 0.2)
    labels = torch.tensor([0, 0, 1, 0])
    d = 2
    negs = Negatives(
        anchors=F.normalize(torch.randn(2, d), dim=1), positives=F.normalize(torch.randn(2, d)),
        anchor_ids=torch.tensor([0, 3]),
        pool=F.normalize(torch.randn(2, d), dim=1),
        pool_ids=torch.tensor([1, 2]),
        mask=torch.ones(2, 2, dtype=torch.bool),
        extra=F.normalize(torch.randn(2, 1, d), dim=-1),
        extra_ids=torch.tensor([[-1], [-1]]),
        extra_sources=torch.tensor([[[1, 2]], [[3, 2]]]),
        extra_source_weights=torch.tensor([[[0.3, 0.7]], [[0.2, 0.8]]]),
    )
    fn = false_negative_matrix(negs, labels)
    torch.testing.assert_close(fn, torch.tensor([[1.0, 0.0, 0.3], [1.0, 0.0, 0.2]]))


def test_fnr_accounting_of_the_strategy():
    # 3 instances, ids 0 and 1 share label 0, id 2 has label 1
    labels = torch.tensor([0, 0, 1])
    ids = torch.tensor([0, 1, 2])
    q, k, _ = unit_pair(3, 4, 5)
    s, s2 = 6, 4
    negs = select(MixingConfig(N=4, s=s, s_prime=s2), q, k, ids)
    fn = false_negative_matrix(negs, labels)  # (A, P + S)
    assert fn.shape == (6, 6 + s + s2)
    la = labels[negs.anchor_ids]
    src, sw = negs.extra_sources, negs.extra_source_weights  # (A, S, 2)
    seen_mixed, pairs, fn_sum = 0, 0, 0.0
    for a in range(6):
        for c in range(negs.width):
            if c < 6:  # real: 1 if same label
                want = float(labels[negs.pool_ids[c]] == la[a])
                assert fn[a, c] == want
                if negs.mask[a, c]:
                    pairs, fn_sum = pairs + 1, fn_sum + want
                continue
            t = c - 6
            w_same = sum(float(sw[a, t, r]) for r in range(2) if labels[src[a, t, r]] == la[a])
            assert abs(float(fn[a, c]) - w_same) < 1e-12
            pairs, fn_sum = pairs + 1, fn_sum + w_same
            same = [bool(labels[src[a, t, r]] == la[a]) for r in range(2)]
            if t < s and same[0] != same[1]:  # a pair mix of a same- and an other-label parent
                alpha_same = float(sw[a, t, 0] if same[0] else sw[a, t, 1])
                assert abs(float(fn[a, c]) - alpha_same) < 1e-12
                seen_mixed += 1
            if t >= s:  # query mix: the query's share beta counts as a false negative
                assert int(src[a, t, 0]) == int(negs.anchor_ids[a])
                assert float(fn[a, c]) >= float(sw[a, t, 0]) - 1e-12
    assert seen_mixed > 0
    # the meter reads the same shares over the selected pairs; synthetic candidates are never
    # instance collisions
    meter = NegativeMeter(labels)
    meter.observe(negs, negs.similarity().detach())
    _, total = meter.snapshot()
    assert pairs == 6 * (4 + s + s2)
    assert abs(total["fnr"] - fn_sum / pairs) < 1e-12
    assert total["negatives_per_anchor"] == 4 + s + s2
    assert total["collisions_per_anchor"] == 0.0


# --------------------------------------------------------------------------- contract, cost
def test_default_config_small_batch_and_costs():
    q, k, ids = unit_pair(8, 16, 6, dtype=torch.float32)
    charges: dict = {}
    negs = select(None, q, k, ids, charges=charges)
    cfg = MixingConfig()
    S = cfg.s + cfg.s_prime
    assert negs.pool.shape == (16, 16) and negs.mask.shape == (16, 16)
    assert negs.extra.shape == (16, S, 16) and negs.width == 16 + S
    assert charges == {"mining": [16 * 16 * 16], "adv": [16 * S * 16]}
    out = info_nce(negs, 0.2)
    assert torch.isfinite(out.loss) and out.sim.shape == (16, 16 + S)


def test_repeated_ids_are_masked_not_violations():
    # the runner never repeats an id in a batch; if one does, its extra views are masked, and
    # the mixes whose parents fell outside the anchor's negatives are masked too
    q, k, _ = unit_pair(4, 3, 8)
    ids = torch.tensor([3, 3, 5, 7])
    strat = strategies.create("mixing", MixingConfig(N=6, s=4, s_prime=2), dim=3, n_train=10)
    negs = strat.select(q, k, ctx_for(ids))
    strat.check()
    assert negs.mask.sum(1).tolist() == [4, 4, 6, 6, 4, 4, 6, 6]
    assert not negs.extra_mask[0].all()  # anchor 0 has 4 real negatives < N = 6
    assert bool(negs.extra_mask[2].all())
    # every valid mix has real negatives of its anchor as parents (the query only in h')
    zid = negs.anchor_ids
    for a in range(8):
        for t in range(6):
            if negs.extra_mask[a, t]:
                parents = negs.extra_sources[a, t].tolist()[:2] if t < 4 else \
                    negs.extra_sources[a, t].tolist()[1:]
                assert all(pid != int(zid[a]) for pid in parents)


def test_one_instance_batch_raises():
    q, k, ids = unit_pair(1, 3, 0)
    with pytest.raises(StrategyError, match="mixing: needs at least 2 instances"):
        select(None, q, k, ids)


@pytest.mark.parametrize("kwargs,word", [
    ({"N": 0}, "N"), ({"s": -1}, "s"), ({"s_prime": -2}, "s_prime"),
])
def test_bad_config_raises(kwargs, word):
    with pytest.raises(StrategyError, match=f"mixing: {word} "):
        MixingConfig(**kwargs)
