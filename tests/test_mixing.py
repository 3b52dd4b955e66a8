"""mixing (MoCHi, Kalantidis et al. 2020): the hardest-N selection and the mixes' similarities
against a loop-written reference (same generator draws); the Gram-trick similarity function against
materialised, detached mixes (values and gradients, gradcheck); FNR accounting."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.metrics import NegativeMeter, false_negative_matrix
from negbench.harness.objectives import info_nce
from negbench.strategies import Negatives, StrategyError, mixing
from negbench.strategies.mixing import (
    MixingConfig,
    _MixedSimilarity,
    gram_buffer,
    hardest,
    mixed_similarity,
)


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
def reference(q, k, ids, n_hard, s, s2, seed, draw_dtype=torch.float64):
    """MoCHi written one anchor and one synthetic point at a time, replaying the generator draws
    in the order the module documents (alpha and beta drawn in ``draw_dtype``, the embeddings').
    Returns, per anchor, its mask row over the 2B views, its synthetic vectors, their sources
    and source weights."""
    b = q.shape[0]
    z = torch.cat([q, k]).tolist()
    zid = torch.cat([ids, ids]).tolist()
    p = 2 * b
    n = min(n_hard, p - 2)
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (p, s), generator=g)
    off = torch.randint(max(n - 1, 1), (p, s), generator=g)
    alpha = torch.rand((p, s), generator=g, dtype=draw_dtype)
    jq = torch.randint(n, (p, s2), generator=g)
    beta = 0.5 * torch.rand((p, s2), generator=g, dtype=draw_dtype)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    def normalize(u):
        norm = math.sqrt(sum(x * x for x in u))
        return [x / norm for x in u]

    # the N hardest come in hardest()'s order, which depends only on how the entries compare:
    # take it from hardest() on the loop's similarities, after checking that it is the set of
    # the N most similar real negatives
    sims = [[dot(z[a], z[c]) if zid[c] != zid[a] else -math.inf for c in range(p)]
            for a in range(p)]
    order = hardest(torch.tensor(sims, dtype=torch.float64), n).tolist()
    out = []
    for a in range(p):
        base = [c for c in range(p) if zid[c] != zid[a]]
        hard = sorted(base, key=lambda c: -sims[a][c])[:n]  # noqa: B023
        assert sorted(order[a]) == sorted(hard)
        hard = order[a]
        row, vecs, srcs, ws = [zid[c] != zid[a] for c in range(p)], [], [], []
        for t in range(s):
            ii = int(i[a, t])
            o = int(off[a, t])
            jj = o + (o >= ii) if n >= 2 else ii
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
    (64, 5, 4, 3, 2, 5),  # P = 128 = 32 N: the N hardest through the grouped pruning pass
])
def test_selection_and_mixing_match_loop_reference(b, d, n_hard, s, s2, seed):
    q, k, ids = unit_pair(b, d, seed)
    negs = select(MixingConfig(N=n_hard, s=s, s_prime=s2), q, k, ids, seed=seed + 10)
    ref = reference(q, k, ids, n_hard, s, s2, seed + 10)
    p, S = 2 * b, s + s2
    z = torch.cat([q, k]).tolist()
    # the shared selection is in-batch's mask form; the mixes are virtual per-anchor extras
    assert negs.index is None and negs.sources is None and negs.batch_views == p
    assert torch.equal(negs.pool, torch.cat([q, k]))
    assert torch.equal(negs.pool_ids, torch.cat([ids, ids]))
    assert negs.extra is None and negs.num_extra == S and negs.width == p + S
    assert negs.sim.shape == (p, p + S)
    assert torch.equal(negs.extra_ids, torch.full((p, S), -1))
    assert bool(negs.extra_mask.all())
    for a, (row, vecs, srcs, ws) in enumerate(ref):
        assert negs.mask[a].tolist() == row
        want = [sum(x * y for x, y in zip(z[a], v, strict=True)) for v in z + vecs]
        torch.testing.assert_close(negs.sim[a].detach(), torch.tensor(want, dtype=torch.float64),
                                   rtol=0, atol=1e-14)
        if S:
            assert negs.extra_sources[a].tolist() == srcs
            torch.testing.assert_close(negs.extra_source_weights[a],
                                       torch.tensor(ws, dtype=torch.float64), rtol=0, atol=0)
    # what the harness reads: real columns stand for their own id with weight 1
    src, sw = negs.label_sources()  # (A, P + S, 2)
    assert src[:, :p, 0].tolist() == [torch.cat([ids, ids]).tolist()] * p
    assert (src[:, :p, 1] == -1).all() and sw[:, :p].tolist() == [[[1.0, 0.0]] * p] * p
    assert torch.equal(src[:, p:], negs.extra_sources)


@pytest.mark.parametrize("a,p,n", [
    (7, 256, 8), (5, 260, 8), (3, 4096, 64), (3, 2048, 64),  # 16 N <= P <= 64 N: groups of 4
    (4, 1024, 64), (5, 260, 16),
    (5, 258, 8), (6, 64, 8), (2, 1028, 16), (4, 40, 40), (3, 512, 64),  # out of range
])
def test_hardest_equals_topk(a, p, n):
    # the grouped pruning passes and the plain top-k agree with torch.topk, -inf entries (the
    # masked own view and positive) included
    g = torch.Generator().manual_seed(p + n)
    sim = torch.randn(a, p, generator=g)  # (A, P)
    sim[:, :2] = float("-inf")
    sim[0] = torch.rand(p, generator=g) ** 8  # a row crowded near 0
    got = hardest(sim, n)  # (A, N) in no particular order
    assert torch.equal(got.sort(1).values, sim.topk(n, dim=1).indices.sort(1).values)


def test_hardest_with_and_without_ordered_bits(monkeypatch):
    g = torch.Generator().manual_seed(6)
    for p, n in ((512, 64), (1024, 64)):  # the plain and the grouped paths
        sim = torch.randn(40, p, generator=g)
        with_keys = hardest(sim, n)
        monkeypatch.setattr(mixing, "KEYS_UP_TO", 0)
        on_floats = hardest(sim, n)
        monkeypatch.undo()
        want = sim.topk(n, dim=1).indices.sort(1).values
        assert torch.equal(with_keys.sort(1).values, want)
        assert torch.equal(on_floats.sort(1).values, want)


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


def test_float32_similarities_match_float64_materialised_mixes():
    # the Gram trick in float32 against the float64 loop reference's materialised mixes
    q, k, ids = unit_pair(16, 8, 1, dtype=torch.float32)
    negs = select(MixingConfig(N=8, s=16, s_prime=8), q, k, ids, seed=3)
    assert negs.sim.dtype == torch.float32 and negs.extra_source_weights.dtype == torch.float32
    ref = reference(q.double(), k.double(), ids, 8, 16, 8, 3, torch.float32)
    syn = torch.tensor([vecs for _, vecs, _, _ in ref], dtype=torch.float64)  # (A, S, D)
    want = torch.einsum("ad,asd->as", torch.cat([q, k]).double(), syn)  # (A, S)
    assert want.abs().max() <= 1 + 1e-12
    torch.testing.assert_close(negs.sim[:, 32:].detach().double(), want, rtol=0, atol=2e-6)


def test_query_mixes_lean_towards_the_query():
    # beta < 0.5: h' is closer to its hard parent than to the query, yet harder than that parent
    # (a . h' >= a . n_j when a . n_j >= 0), so harder than the N-th hardest real negative
    q, k, ids = unit_pair(8, 6, 2)
    negs = select(MixingConfig(N=4, s=0, s_prime=5), q, k, ids)
    sim = negs.similarity()  # (A, P + s')
    assert sim.shape == (16, 16 + 5)
    nth = sim[:, :16].masked_fill(~negs.mask, -2).topk(4, dim=1).values[:, -1]  # (A,)
    assert (nth > 0).all()
    qmix = sim[:, 16:]
    w = negs.extra_source_weights  # (A, s', 2)
    assert (w[..., 0] < 0.5).all() and (w[..., 0] >= 0).all()
    assert (qmix >= nth[:, None] - 1e-12).all()


def test_no_gradient_through_the_synthesis():
    # d/dq of sum(anchor . synthetic) must be just the synthetic vectors of q's anchors: the
    # parents (other anchors' views, and the query itself for h') carry no gradient
    q, k, ids = unit_pair(5, 4, 3)
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    negs = select(MixingConfig(N=3, s=3, s_prime=3), q, k, ids, seed=4)
    assert negs.extra is None and negs.sim.requires_grad
    syn_part = negs.similarity()[:, 10:]  # (A, s + s')
    gq, gk = torch.autograd.grad(syn_part.sum(), (q, k), retain_graph=True)
    ref = reference(q.detach(), k.detach(), ids, 3, 3, 3, 4)
    syn = torch.tensor([vecs for _, vecs, _, _ in ref], dtype=torch.float64)  # (A, s + s', D)
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


def test_loss_and_gradient_equal_materialised_extras():
    # the virtual extras give the objective exactly what the materialised, detached (A, S, D)
    # mixes gave it: the same loss and the same gradients to both views
    q, k, ids = unit_pair(6, 5, 9)
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    negs = select(MixingConfig(N=4, s=5, s_prime=3), q, k, ids, seed=2)
    ref = reference(q.detach(), k.detach(), ids, 4, 5, 3, 2)
    syn = torch.tensor([vecs for _, vecs, _, _ in ref], dtype=torch.float64)  # (A, S, D)
    mat = dataclasses.replace(negs, sim=None, extra=syn)
    for tau in (0.2, 0.01):  # the objective's constant-shift and clamped branches
        got, want = info_nce(negs, tau).loss, info_nce(mat, tau).loss
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
        for g_got, g_want in zip(torch.autograd.grad(got, (q, k), retain_graph=True),
                                 torch.autograd.grad(want, (q, k)), strict=True):
            torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- the Gram trick
def random_mixes(p: int, s: int, seed: int, *, unit: bool):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(p, 6, generator=g, dtype=torch.float64)  # (P, D)
    if unit:
        z = F.normalize(z, dim=1)
    first = torch.randint(p, (p, s), generator=g)  # (P, S)
    first[:, -2:] = torch.arange(p)[:, None]  # two query mixes: the anchor is the first parent
    second = torch.randint(p, (p, s), generator=g)  # (P, S)
    w = torch.rand((p, s), generator=g, dtype=torch.float64)  # (P, S)
    return z, first, second, w


def materialised(z, first, second, w):
    """(A, P + S): z against the pool z and against the detached normalised mixes."""
    syn = F.normalize(z[second].lerp(z[first], w[..., None]), dim=-1).detach()  # (A, S, D)
    return torch.cat([z @ z.T, torch.einsum("ad,asd->as", z, syn)], dim=1)


@pytest.mark.parametrize("unit", [True, False])
def test_mixed_similarity_gradcheck_against_materialised(unit):
    # non-unit rows too: the mixes' norms come from the Gram diagonal, not from an assumed 1
    z0, first, second, w = random_mixes(7, 5, 0 if unit else 1, unit=unit)
    z = z0.clone().requires_grad_(True)
    got = mixed_similarity(z, gram_buffer(z0, 5), first, second, w)  # (A, P + S)
    torch.testing.assert_close(got.detach(), materialised(z0, first, second, w),
                               rtol=0, atol=1e-14)
    # the materialised reference with the mixes frozen at z0 is what "synthetic points are
    # constants" means; gradcheck proves its Jacobian against finite differences ...
    syn0 = F.normalize(z0[second].lerp(z0[first], w[..., None]), dim=-1)  # (A, S, D)

    def frozen(x):
        return torch.cat([x @ x.T, torch.einsum("ad,asd->as", x, syn0)], dim=1)

    assert torch.autograd.gradcheck(frozen, (z,))
    # ... and the custom backward gives exactly that Jacobian (every row of it)
    def custom(x):
        return mixed_similarity(x, gram_buffer(x, 5), first, second, w)

    jac_got = torch.autograd.functional.jacobian(custom, z)
    jac_want = torch.autograd.functional.jacobian(frozen, z)
    torch.testing.assert_close(jac_got, jac_want, rtol=0, atol=1e-13)


def test_mixed_similarity_gradient_for_any_upstream_gradient():
    # z is both the anchors and the pool: its gradient is (G_main + C) z + G_main^T z, C the mixes'
    # share (their upstream gradient times the constant mix vectors)
    z0, first, second, w = random_mixes(6, 4, 2, unit=True)
    grad = torch.randn(6, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = z0.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(_MixedSimilarity.apply(z, gram_buffer(z0, 4), first, second, w),
                                 z, grad)
    syn = F.normalize(z0[second].lerp(z0[first], w[..., None]), dim=-1)  # (A, S, D)
    want = (grad[:, :6] @ z0 + torch.einsum("as,asd->ad", grad[:, 6:], syn)
            + grad[:, :6].T @ z0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_no_synthesis_equals_in_batch_loss():
    q, k, ids = unit_pair(7, 5, 4)
    mix = select(MixingConfig(N=4, s=0, s_prime=0), q, k, ids)
    assert mix.num_extra == 0 and mix.sim.shape == (14, 14)
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


@pytest.mark.parametrize("s,s2", [(0, 0), (3, 2)])
def test_an_appended_candidate_joins_the_virtual_mixes(s, s2):
    """``Negatives.append_extra`` on virtual extras, none of them included (s = s' = 0: extras
    of width 0, with label sources): the new column stays virtual (its similarity in ``sim``),
    has no label source and weighs as a true negative in the meter."""
    labels = torch.zeros(3, dtype=torch.long)  # one class: every real candidate is a FN
    ids = torch.tensor([0, 1, 2])
    q, k, _ = unit_pair(3, 4, 5)
    negs = select(MixingConfig(N=4, s=s, s_prime=s2), q, k, ids)
    h = F.normalize(torch.randn(6, 1, 4, dtype=torch.float64), dim=-1)  # (A, 1, D)
    merged = negs.append_extra(h, torch.full((6, 1), -1))
    assert merged.extra is None and merged.num_extra == s + s2 + 1
    assert merged.extra_sources.shape == (6, s + s2 + 1, 2)
    torch.testing.assert_close(merged.sim[:, -1], (negs.anchors * h[:, 0]).sum(-1))
    torch.testing.assert_close(merged.sim[:, :-1], negs.sim)
    fn = false_negative_matrix(merged, labels)
    assert (fn[:, -1] == 0).all()
    torch.testing.assert_close(fn[:, :-1], false_negative_matrix(negs, labels))
    meter = NegativeMeter(labels)
    meter.observe(merged, merged.similarity().detach())
    want = float(negs.selected().sum()) / 6 + 1  # every anchor gets the new column
    assert meter.snapshot()[1]["negatives_per_anchor"] == pytest.approx(want)


# --------------------------------------------------------------------------- contract, cost
def test_default_config_small_batch_and_costs():
    q, k, ids = unit_pair(8, 16, 6, dtype=torch.float32)
    charges: dict = {}
    negs = select(None, q, k, ids, charges=charges)
    cfg = MixingConfig()
    S = cfg.s + cfg.s_prime
    assert negs.pool.shape == (16, 16) and negs.mask.shape == (16, 16)
    assert negs.extra is None and negs.num_extra == S and negs.width == 16 + S
    # one (A, P) product, the objective's own (negs.sim): nothing charged as mining; the mixing
    # work is the A S mix similarities
    assert charges == {"mining": [], "adv": [16 * S]}
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


def test_warmup_trains_on_in_batch_negatives_until_its_fraction():
    from negbench.strategies.kernels import in_batch_negatives

    table = Table(300, 16)
    g = torch.Generator().manual_seed(0)
    ids = torch.randperm(300, generator=g)[:16]
    q = F.normalize(torch.randn(16, 16, generator=g), dim=1)
    k = F.normalize(q + 0.3 * torch.randn(16, 16, generator=g), dim=1)
    s = strategies.create("mixing", strategies.get("mixing").Config(warmup=0.25), dim=16,
                          n_train=300)
    early = s.select(q, k, make_ctx(ids, table, fraction=0.2))
    plain = in_batch_negatives(q, k, ids)
    assert early.num_extra == 0 and torch.equal(early.mask, plain.mask)
    late = s.select(q, k, make_ctx(ids, table, fraction=0.25))
    assert late.num_extra == s.cfg.s + s.cfg.s_prime
