"""The false-negative-aware strategies (issue 18) against loop references written from their
papers' rules, one anchor and one candidate at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies


def _views(b: int = 12, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    # positives near their anchors, so the positive's score spans low and high values
    k = F.normalize(q + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return q, k


def _mine(name: str, q, k, seed: int = 0, **knobs):
    cls = strategies.get(name)
    strat = cls(cls.Config(**knobs), dim=q.shape[1], n_train=100)
    ids = torch.arange(q.shape[0]) * 3
    return strat.select(q, k, make_ctx(ids, Table(100, q.shape[1]), seed=seed))


def _pool_selection(negs) -> torch.Tensor:
    """(A, P) bool: the pool columns an index-form selection uses (its valid entries)."""
    a, p = negs.num_anchors, negs.pool_size
    return torch.zeros(a, p, dtype=torch.bool).scatter_(1, negs.index, negs.selected())


def _pairs(q, k):
    """(anchors, positives, their ids) as SimCLR's symmetric selection lays them out."""
    z = torch.cat([q, k])
    ids = torch.cat([torch.arange(q.shape[0])] * 2)
    return z, torch.cat([k, q]), ids


# --------------------------------------------------------------------------- self-guided
def _loop_self_guided(q, k, margin: float) -> torch.Tensor:
    z, pos, ids = _pairs(q, k)
    n = z.shape[0]
    out = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        s_p = float(z[a] @ pos[a])
        for c in range(n):
            if ids[c] == ids[a]:
                continue  # the anchor itself and its positive are never negatives
            # GISTEmbed: a candidate the guide scores above the positive (by the margin) is a
            # false negative and leaves the loss
            out[a, c] = not float(z[a] @ z[c]) > s_p + margin
    return out


@pytest.mark.parametrize("margin", [0.1, 0.0, -0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_self_guided_matches_its_loop_reference(margin, seed):
    q, k = _views(seed=seed)
    negs = _mine("self-guided", q, k, margin=margin)
    want = _loop_self_guided(q, k, margin)
    assert torch.equal(negs.selected(), want)
    if margin <= 0:
        assert not want.all()  # the rule removed something here, so the test can fail
    torch.testing.assert_close(negs.similarity(), negs.anchors @ negs.pool.T)


# --------------------------------------------------------------------------- positive-aware
def _loop_positive_aware(q, k, relative, absolute, range_min, range_max, K) -> torch.Tensor:
    """sentence-transformers' mine_hard_negatives rule set, per anchor: rank the candidates by
    score, keep ranks in [range_min, range_max), drop those not below the positive by the
    margins, then the K hardest of what is left."""
    z, pos, ids = _pairs(q, k)
    n = z.shape[0]
    out = torch.zeros(n, n, dtype=torch.bool)
    for a in range(n):
        s_p = float(z[a] @ pos[a])
        cands = [c for c in range(n) if ids[c] != ids[a]]
        ranked = sorted(cands, key=lambda c: -float(z[a] @ z[c]))
        stop = range_max if range_max else len(ranked)
        kept = []
        for c in ranked[range_min:stop]:
            s = float(z[a] @ z[c])
            if absolute >= 0 and not s < s_p - absolute:
                continue
            if relative >= 0 and not s < (1 - relative) * s_p:
                continue
            kept.append(c)
        for c in kept[:K] if K else kept:  # kept is in ranking order: the hardest first
            out[a, c] = True
    return out


@pytest.mark.parametrize("knobs", [
    dict(),  # TopK-PercPos: relative 0.05, the whole ranking, every kept one
    dict(relative=-1.0, absolute=0.1),
    dict(relative=0.1, absolute=0.05, range_min=2, range_max=15, K=4),
    dict(relative=-1.0, range_min=3, K=5),
])
def test_positive_aware_matches_its_loop_reference(knobs):
    q, k = _views(seed=3)
    negs = _mine("positive-aware", q, k, **knobs)
    cfg = strategies.get("positive-aware").Config(**knobs)
    want = _loop_positive_aware(q, k, cfg.relative, cfg.absolute, cfg.range_min, cfg.range_max,
                                cfg.K)
    assert torch.equal(negs.selected(), want)
    assert want.any() and not want[:, :].equal(_pairs_mask(q))  # something was dropped


def _pairs_mask(q) -> torch.Tensor:
    ids = torch.cat([torch.arange(q.shape[0])] * 2)
    return ids[:, None] != ids[None, :]


def test_positive_aware_random_sampling_keeps_k_of_the_kept_set():
    q, k = _views(b=16, seed=5)
    full = _mine("positive-aware", q, k, relative=-1.0, absolute=0.0)
    some = _mine("positive-aware", q, k, relative=-1.0, absolute=0.0, K=3, sampling="random")
    sel, kept = some.selected(), full.selected()
    assert not (sel & ~kept).any()  # only kept candidates
    assert torch.equal(sel.sum(1), kept.sum(1).clamp(max=3))  # K of them, or all there are
    top = _mine("positive-aware", q, k, relative=-1.0, absolute=0.0, K=3)
    assert not torch.equal(sel, top.selected())  # random is not the hardest
    again = _mine("positive-aware", q, k, relative=-1.0, absolute=0.0, K=3, sampling="random")
    assert torch.equal(sel, again.selected())  # same seed, same draw


@pytest.mark.parametrize("bad", [dict(relative=1.0), dict(range_min=5, range_max=5),
                                 dict(K=-1), dict(sampling="hardest"), dict(range_max=-1)])
def test_positive_aware_rejects_bad_knobs(bad):
    with pytest.raises(strategies.StrategyError):
        strategies.get("positive-aware").Config(**bad)


# --------------------------------------------------------------------------- simans
def _loop_simans_probs(q, k, a, b, top_k, tau) -> list[dict[int, float]]:
    """Per anchor: the SimANS sampling distribution over its top_k candidates, p_n ∝
    exp(-a (gap_n - b)^2) with gap_n = (s_n - s_p) / tau."""
    import math

    z, pos, ids = _pairs(q, k)
    out = []
    for i in range(z.shape[0]):
        s_p = float(z[i] @ pos[i])
        cands = sorted((c for c in range(z.shape[0]) if ids[c] != ids[i]),
                       key=lambda c: -float(z[i] @ z[c]))[:top_k]
        w = {c: math.exp(-a * ((float(z[i] @ z[c]) - s_p) / tau - b) ** 2) for c in cands}
        tot = sum(w.values())
        out.append({c: v / tot for c, v in w.items()})
    return out


def test_simans_draws_k_from_the_top_k_only():
    q, k = _views(b=16, seed=7)
    probs = _loop_simans_probs(q, k, 0.5, 0.0, 10, 0.2)
    for seed in range(5):
        negs = _mine("simans", q, k, seed=seed, top_k=10, K=4)
        assert negs.index.shape == (32, 4) and negs.sim.shape == (32, 4)  # index form
        sel = _pool_selection(negs)
        assert torch.equal(sel.sum(1), torch.full((32,), 4))
        for i in range(32):
            assert set(sel[i].nonzero().flatten().tolist()) <= set(probs[i])


@pytest.mark.parametrize("a,b", [(0.5, 0.0), (2.0, -1.0)])
def test_simans_frequencies_match_its_probabilities(a, b):
    """With K = 1 a draw is one candidate with probability p_n: over 3,000 seeded draws the
    frequencies match the loop reference's p_n within 5 binomial standard errors."""
    q, k = _views(b=6, seed=8)
    probs = _loop_simans_probs(q, k, a, b, 6, 0.2)
    draws = 3000
    counts = torch.zeros(12, 12, dtype=torch.float64)
    for seed in range(draws):
        counts += _pool_selection(_mine("simans", q, k, seed=seed, a=a, b=b, top_k=6,
                                        K=1)).double()
    for i in range(12):
        for c in range(12):
            p = probs[i].get(c, 0.0)
            se = (p * (1 - p) / draws) ** 0.5
            assert abs(float(counts[i, c]) / draws - p) <= 5 * se + 1e-9, (i, c, p)
    assert max(max(p.values()) for p in probs) > 0.4  # not uniform, so the test can fail


def test_simans_warmup_keeps_every_in_batch_negative_until_that_fraction():
    from negbench.strategies.kernels import in_batch_negatives

    q, k = _views(b=16, seed=9)
    cls = strategies.get("simans")
    strat = cls(cls.Config(warmup=0.25, K=4), dim=q.shape[1], n_train=100)
    ids = torch.arange(16) * 3
    table = Table(100, q.shape[1])
    early = strat.select(q, k, make_ctx(ids, table, fraction=0.2))
    assert early.index is None  # mask form: every other view of the batch
    assert torch.equal(early.selected(), in_batch_negatives(q, k, ids).selected())
    later = strat.select(q, k, make_ctx(ids, table, fraction=0.25))
    assert later.index.shape == (32, 4)  # SimANS's draw from then on
    with pytest.raises(strategies.StrategyError, match="warmup"):
        cls.Config(warmup=1.0)


# --------------------------------------------------------------------------- glofnd
def _loop_glofnd(q, k, ids, lam, m, v, alpha, lr, epoch):
    """The authors' rule one item at a time: keep s_ij <= lambda_i; g_i = alpha - mean over i's
    two views of the share of its negatives above lambda_i; one Adam step (bias correction by
    the epoch), lambda clamped to [-1, 1]. Returns (kept (2B, 2B), weights, new lam, m, v)."""
    import math

    z, _, _ = _pairs(q, k)
    b = q.shape[0]
    keep = torch.zeros(2 * b, 2 * b, dtype=torch.bool)
    weights = torch.zeros(2 * b, 2 * b, dtype=torch.float64)
    lam, m, v = lam.clone(), m.clone(), v.clone()
    grads = {}
    for row in range(2 * b):
        item = row % b
        li = float(lam[ids[item]])
        negs = [c for c in range(2 * b) if c % b != item]
        above = [c for c in negs if float(z[row] @ z[c]) > li]
        for c in negs:
            keep[row, c] = c not in above
        kept = max(len(negs) - len(above), 1)
        for c in negs:
            weights[row, c] = len(negs) / kept if c not in above else 0.0
        grads.setdefault(item, []).append(len(above) / len(negs))
    for item, shares in grads.items():
        g = alpha - sum(shares) / 2
        i = int(ids[item])
        m[i] = 0.9 * float(m[i]) + 0.1 * g
        v[i] = 0.98 * float(v[i]) + 0.02 * g * g
        m_hat = float(m[i]) / (1 - 0.9 ** (epoch + 1))
        v_hat = float(v[i]) / (1 - 0.98 ** (epoch + 1))
        lam[i] = min(max(float(lam[i]) - lr * m_hat / (math.sqrt(v_hat) + 1e-8), -1.0), 1.0)
    return keep, weights, lam, m, v


def test_glofnd_matches_its_loop_reference_over_steps():
    cls = strategies.get("glofnd")
    cfg = cls.Config(lr=0.3, start=0.0)
    strat = cls(cfg, dim=6, n_train=40)
    lam, m, v = strat.lam.double().clone(), strat.m.double().clone(), strat.v.double().clone()
    removed = 0
    for step in range(8):
        q, k = _views(b=10, seed=20 + step)
        ids = torch.randperm(40, generator=torch.Generator().manual_seed(step))[:10]
        ctx = make_ctx(ids, Table(40, 6), step=step)
        negs = strat.select(q, k, ctx)
        keep, w, lam, m, v = _loop_glofnd(q, k, ids, lam, m, v, cfg.alpha, cfg.lr,
                                          step * 10 // 40)
        assert torch.equal(negs.selected(), keep) and negs.weights is None
        torch.testing.assert_close(strat.lam.double(), lam, rtol=1e-5, atol=1e-6)
        removed += int((~keep & _pairs_mask(q)).sum())
    assert removed > 0  # thresholds fell below 1 and masked something: the test can fail
    assert (strat.lam < 1).any() and strat.extra_metrics()["glofnd_lambda_mean"] < 1


def test_glofnd_is_plain_in_batch_before_its_start():
    q, k = _views(b=8, seed=2)
    cls = strategies.get("glofnd")
    strat = cls(cls.Config(start=0.5), dim=6, n_train=40)
    negs = strat.select(q, k, make_ctx(torch.arange(8), Table(40, 6), fraction=0.4))
    assert torch.equal(negs.selected(), _pairs_mask(q)) and negs.weights is None
    assert torch.equal(strat.lam, torch.ones(40))


# --------------------------------------------------------------------------- fnc
def _loop_fnc(q, k, sup, top_k, threshold) -> torch.Tensor:
    """The authors' detection, per anchor image: each candidate view's score is its largest
    cosine to any of the image's views (two training views and the support views); the
    candidates in the image's top_k by score and above the threshold are false negatives."""
    z, _, ids = _pairs(q, k)
    b = q.shape[0]
    fn = torch.zeros(2 * b, 2 * b, dtype=torch.bool)
    for i in range(b):
        views = [q[i], k[i]] + [sup[s, i] for s in range(sup.shape[0])]
        scores = {c: max(float(v @ z[c]) for v in views) for c in range(2 * b) if ids[c] != i}
        ranked = sorted(scores, key=lambda c: -scores[c])[:top_k]
        for c in ranked:
            if scores[c] > threshold:
                fn[i, c] = fn[i + b, c] = True
    return fn


@pytest.mark.parametrize("mode", ["attraction", "elimination"])
@pytest.mark.parametrize("top_k,threshold", [(10, 0.7), (3, 0.2), (30, -1.0)])
def test_fnc_matches_its_loop_reference(mode, top_k, threshold):
    b, d, n = 10, 6, 40
    q, k = _views(b=b, d=d, seed=11)
    table = Table(n, d, seed=5)
    table.z = table.z.double()
    ids = torch.arange(b) * 3
    cls = strategies.get("fnc")
    strat = cls(cls.Config(support=4, top_k=top_k, threshold=threshold, mode=mode), dim=d,
                n_train=n)
    negs = strat.select(q, k, make_ctx(ids, table))
    sup = table.z[ids.repeat(4)].reshape(4, b, d)  # what ctx.encode returned, in order
    fn = _loop_fnc(q, k, sup, top_k, threshold)
    assert torch.equal(negs.selected(), _pairs_mask(q) & ~fn)
    if mode == "attraction":
        assert torch.equal(negs.extra_positives, fn)
    else:
        assert negs.extra_positives is None
    assert table.encoded == 4 * b  # the support views, once each
    if threshold < 0.5:
        assert fn.any()  # the rule found something here, so the test can fail


def test_fnc_attraction_trains_through_supcon_and_elimination_through_infonce():
    from negbench.harness.objectives import info_nce

    q, k = _views(b=8, seed=12)
    q = q.clone().requires_grad_(True)
    for mode in ("attraction", "elimination"):
        negs = _mine("fnc", q, k, support=2, top_k=5, threshold=-1.0, mode=mode)
        loss = info_nce(negs, 0.2).loss
        loss.backward()
        assert torch.isfinite(loss) and q.grad.abs().sum() > 0
        q.grad = None
