"""semi-hard: the vectorised band against a loop reference written the way
pytorch-metric-learning's TripletMarginMiner(type_of_triplets="semihard") enumerates triplets."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Table, make_ctx

from negbench import strategies
from negbench.strategies import StepContext, StrategyError
from negbench.strategies.kernels import in_batch_negatives
from negbench.strategies.semi_hard import SemiHard, SemiHardConfig


# --------------------------------------------------------------------------- helpers
def unit(n: int, d: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def ctx_for(ids: torch.Tensor, n_train: int, step: int = 0, charges: list | None = None):
    return make_ctx(ids, Table(n_train, 4), step=step, mining=charges)


def batch(b: int, d: int, n_train: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k = unit(b, d, g), unit(b, d, g)
    ids = torch.randperm(n_train, generator=g)[:b]
    return q, k, ids


def dot(u, v) -> float:
    return sum(float(x) * float(y) for x, y in zip(u, v, strict=True))


def dist(u, v) -> float:
    return math.sqrt(max(2.0 - 2.0 * dot(u, v), 0.0))


def reference_pairs(anchors, positives, pool, valid, m, K=0, fallback="none"):
    """Loops: for each anchor, its negatives by the band rule, the K-cap and the fallback."""
    out = set()
    for a in range(anchors.shape[0]):
        d_ap = dist(anchors[a], positives[a])
        cand = [(dist(anchors[a], pool[n]), n) for n in range(pool.shape[0]) if valid[a][n]]
        band = [(d, n) for d, n in cand if 0 < d - d_ap <= m]
        band.sort()
        if K > 0:
            band = band[:K]
        if band:
            out |= {(a, n) for _, n in band}
        elif cand and fallback == "nearest":
            gap = [((d - d_ap - m) if d - d_ap > 0 else (d_ap - d), n) for d, n in cand]
            out.add((a, min(gap)[1]))
        elif cand and fallback == "hardest":
            out.add((a, min(cand)[1]))
    return out


def reference_pml(z, labels, m):
    """TripletMarginMiner(margin=m, type_of_triplets="semihard") as loops: every triplet
    (a, p, n) with label[p] == label[a], p != a, label[n] != label[a], and
    0 < d(a, n) - d(a, p) <= m; returns its (anchor, negative) pairs."""
    out = set()
    n = z.shape[0]
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for neg in range(n):
                if labels[neg] == labels[a]:
                    continue
                g = dist(z[a], z[neg]) - dist(z[a], z[p])
                if 0 < g <= m:
                    out.add((a, neg))
    return out


def pairs(mask: torch.Tensor) -> set:
    return {(a, n) for a, n in zip(*torch.where(mask), strict=True)
            for a, n in [(int(a), int(n))]}


# --------------------------------------------------------------------------- the band
@pytest.mark.parametrize("m", [0.05, 0.2, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_band_equals_triplet_margin_miner_reference(m, seed):
    q, k, ids = batch(10, 4, 50, seed)
    s = SemiHard(SemiHardConfig(m=m, K=0, fallback="none"), dim=4, n_train=50)
    negs = s.select(q, k, ctx_for(ids, 50))
    got = pairs(negs.mask)
    want = reference_pml(torch.cat([q, k]), torch.cat([ids, ids]).tolist(), m)
    assert got == want
    assert negs.pool.shape[0] == 20 and negs.batch_views == 20
    if m == 2.0:  # every negative farther than the positive
        assert len(got) > 0


@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("fallback", ["none", "nearest", "hardest"])
def test_cap_and_fallback_against_loop_reference(K, fallback):
    q, k, ids = batch(12, 3, 60, seed=K + 7)
    cfg = SemiHardConfig(m=0.3, K=K, fallback=fallback)
    negs = SemiHard(cfg, dim=3, n_train=60).select(q, k, ctx_for(ids, 60))
    base = in_batch_negatives(q, k, ids)
    want = reference_pairs(base.anchors, base.positives, base.pool, base.mask.tolist(), 0.3, K,
                           fallback)
    assert pairs(negs.mask) == want
    per_anchor = negs.mask.sum(1)
    if K:
        assert int(per_anchor.max()) <= K
    if fallback != "none":  # every anchor gets at least one negative
        assert int(per_anchor.min()) >= 1


def test_fallback_only_where_the_band_is_empty():
    q, k, ids = batch(16, 3, 64, seed=3)
    plain = SemiHard(SemiHardConfig(m=0.1, fallback="none"), dim=3, n_train=64)
    fb = SemiHard(SemiHardConfig(m=0.1, fallback="nearest"), dim=3, n_train=64)
    a = plain.select(q, k, ctx_for(ids, 64)).mask
    b = fb.select(q, k, ctx_for(ids, 64)).mask
    empty = ~a.any(1)
    assert bool(empty.any()) and bool((~empty).any())  # the case is exercised
    assert torch.equal(a[~empty], b[~empty])
    assert torch.equal(b[empty].sum(1), torch.ones(int(empty.sum()), dtype=torch.long))


def test_never_selects_own_instance_or_positive():
    q, k, ids = batch(8, 4, 30, seed=5)
    for fallback in ("none", "nearest", "hardest"):
        negs = SemiHard(SemiHardConfig(m=2.0, fallback=fallback), dim=4, n_train=30).select(
            q, k, ctx_for(ids, 30))
        assert not bool((negs.mask & negs.own_instance()).any())


def test_hands_its_product_to_the_objective_and_encodes_nothing():
    q, k, ids = batch(6, 5, 20, seed=0)
    q.requires_grad_()
    charges: list[int] = []
    table = Table(20, 5)
    negs = SemiHard(SemiHardConfig(), dim=5, n_train=20).select(
        q, k, make_ctx(ids, table, mining=charges))
    assert charges == []  # the band reuses the objective's product, counted in its FLOPs
    assert negs.sim is not None and negs.sim.requires_grad
    torch.testing.assert_close(negs.sim, negs.anchors @ negs.pool.T)
    assert table.encoded == 0 and table.refreshes == 0


# --------------------------------------------------------------------------- the bank
def test_bank_is_fifo_masked_while_empty_and_masks_own_instance():
    d, n_train = 4, 40
    s = SemiHard(SemiHardConfig(m=2.0, pool="bank", bank_size=5, fallback="hardest"), dim=d,
                 n_train=n_train)
    g = torch.Generator().manual_seed(0)
    q, k = unit(3, d, g, torch.float32), unit(3, d, g, torch.float32)
    ids = torch.tensor([1, 2, 3])
    negs = s.select(q, k, ctx_for(ids, n_train))
    assert negs.pool.shape == (5, d) and not bool(negs.mask.any())  # empty bank: nothing
    s.update(q, k, ctx_for(ids, n_train))
    assert s.bank_ids.tolist() == [1, 2, 3, -1, -1]
    assert torch.equal(s.bank[:3], k)
    q2, k2 = unit(3, d, g, torch.float32), unit(3, d, g, torch.float32)
    ids2 = torch.tensor([3, 7, 8])  # 3 is also in the bank: its own instance there is masked
    negs = s.select(q2, k2, ctx_for(ids2, n_train))
    own = negs.anchor_ids[:, None] == negs.pool_ids[None, :]
    assert not bool((negs.mask & own).any())
    assert not bool(negs.mask[:, 3:].any())  # the empty slots
    assert bool(negs.mask[:, :3].any())
    s.update(q2, k2, ctx_for(ids2, n_train))
    assert s.bank_ids.tolist() == [8, 2, 3, 3, 7]  # wrapped around: oldest (1) overwritten
    assert negs.pool_ids.tolist() == [1, 2, 3, -1, -1]  # the returned ids are a copy


def test_both_with_empty_bank_equals_batch():
    q, k, ids = batch(6, 4, 30, seed=2)
    a = SemiHard(SemiHardConfig(), dim=4, n_train=30).select(q, k, ctx_for(ids, 30))
    b = SemiHard(SemiHardConfig(pool="both", bank_size=7), dim=4, n_train=30).select(
        q, k, ctx_for(ids, 30))
    assert b.pool.shape[0] == 12 + 7 and b.batch_views == 12
    assert torch.equal(b.mask[:, :12], a.mask) and not bool(b.mask[:, 12:].any())


def test_bank_band_against_loop_reference():
    d, n_train = 3, 50
    cfg = SemiHardConfig(m=0.4, pool="bank", bank_size=16, K=2, fallback="nearest")
    s = SemiHard(cfg, dim=d, n_train=n_train).double()
    for step in range(4):
        q, k, ids = batch(6, d, n_train, seed=10 + step)
        negs = s.select(q, k, ctx_for(ids, n_train, step))
        pid = negs.pool_ids[None, :]
        valid = (pid >= 0) & (pid != negs.anchor_ids[:, None])
        want = reference_pairs(negs.anchors, negs.positives, negs.pool, valid.tolist(), 0.4, 2,
                               "nearest")
        assert pairs(negs.mask) == want
        s.update(q, k, ctx_for(ids, n_train, step))


def test_batch_pool_keeps_no_state():
    assert SemiHard(SemiHardConfig(), dim=8, n_train=10).state_bytes() == 0
    assert SemiHard(SemiHardConfig(pool="bank", bank_size=4), dim=8,
                    n_train=10).state_bytes() == 4 * 8 * 4 + 4 * 8


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(m=0.0), dict(m=2.5), dict(K=-1), dict(fallback="easy"),
                                 dict(pool="queue"), dict(bank_size=0)])
def test_bad_config_raises(bad):
    with pytest.raises(StrategyError, match="semi-hard"):
        SemiHardConfig(**bad)


def test_registered():
    assert strategies.get("semi-hard") is SemiHard


@pytest.mark.parametrize("cfg", [SemiHardConfig(), SemiHardConfig(K=3, fallback="hardest"),
                                 SemiHardConfig(pool="both", bank_size=32),
                                 SemiHardConfig(pool="bank", bank_size=4, fallback="none")])
def test_sync_free_on_the_meta_device(cfg):
    """Meta tensors hold no data: any host read (.item(), bool(), nonzero, x[mask], .tolist())
    raises, so a step that runs here never syncs."""
    s = SemiHard(cfg, dim=8, n_train=40).to("meta")
    for step in range(2):
        q = torch.randn(6, 8, device="meta", requires_grad=True)
        k = torch.randn(6, 8, device="meta")
        ctx = StepContext(step=step, fraction=0.0, ids=torch.arange(6, device="meta"),
                          generator=torch.Generator(), n_train=40, encode=None, encode_all=None)
        negs = s.select(q, k, ctx)
        (negs.anchors @ negs.pool.T).masked_fill(~negs.mask, 0).sum().backward()
        s.update(q.detach(), k, ctx)
    assert negs.mask.device.type == "meta"
