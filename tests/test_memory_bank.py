"""memory-bank (MoCo): the FIFO queue against a loop reference, own-instance masking and its
collision count, empty slots, and the identity with in-batch when K equals the batch and m=0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.metrics import NegativeMeter
from negbench.harness.objectives import info_nce
from negbench.strategies import StrategyError
from negbench.strategies.kernels import in_batch_negatives
from negbench.strategies.memory_bank import MemoryBankConfig


def _bank(K: int, d: int = 4, m: float = 0.99):
    return strategies.create("memory-bank", MemoryBankConfig(K=K, m=m), dim=d, n_train=300)


def _batch(b: int, d: int, g: torch.Generator, n: int = 300):
    ids = torch.randperm(n, generator=g)[:b]
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.3 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return ids, q, k


def test_fifo_matches_a_loop_reference_with_wrap_around():
    big_k, d = 10, 4
    s = _bank(big_k, d).double()
    table = Table(300, d)
    ref_q = [[0.0] * d for _ in range(big_k)]
    ref_ids = [-1] * big_k
    ptr = 0
    g = torch.Generator().manual_seed(0)
    for b in (3, 4, 5, 3, 12, 7):  # wraps several times; the batch of 12 is longer than K
        ids, q, k = _batch(b, d, g)
        s.update(q, k, make_ctx(ids, table))
        for j in range(b):
            ref_q[ptr] = [float(x) for x in k[j]]
            ref_ids[ptr] = int(ids[j])
            ptr = (ptr + 1) % big_k
        assert torch.equal(s.queue, torch.tensor(ref_q, dtype=torch.float64))
        assert s.queue_ids.tolist() == ref_ids
        assert int(s.ptr) == ptr


def test_mask_matches_a_loop_reference_and_masks_the_own_instance():
    big_k, d, b = 12, 4, 6
    s = _bank(big_k, d).double()
    table = Table(300, d)
    g = torch.Generator().manual_seed(1)
    ids0, q0, k0 = _batch(b, d, g, n=20)
    s.update(q0, k0, make_ctx(ids0, table))
    ids = torch.cat([ids0[:3], torch.tensor([100, 101, 102])])  # three anchors are queued
    _, q, k = _batch(b, d, g)
    negs = s.select(q, k, make_ctx(ids, table))
    assert negs.batch_views == 0 and negs.index is None
    for i in range(b):
        for j in range(big_k):
            slot_id = int(s.queue_ids[j])
            want = slot_id >= 0 and slot_id != int(ids[i])
            assert bool(negs.mask[i, j]) == want, (i, j)
    assert not negs.mask[:3].all(dim=1).any()  # each of them lost its own queued key
    s.check()  # no contract violation: the own instance is never selected


def test_queued_own_instance_is_counted_as_an_instance_collision():
    big_k, d, b = 8, 4, 4
    s = _bank(big_k, d).double()
    table = Table(300, d)
    g = torch.Generator().manual_seed(2)
    ids0, q0, k0 = _batch(b, d, g)
    s.update(q0, k0, make_ctx(ids0, table))
    s.update(q0, k0, make_ctx(ids0, table))  # the same instances twice: 2 copies of each
    negs = s.select(q0, k0, make_ctx(ids0, table))
    labels = torch.arange(300) % 10
    meter = NegativeMeter(labels)
    meter.observe(negs, info_nce(negs, 0.2).sim)
    _, total = meter.snapshot()
    assert total["collisions_per_anchor"] == 2.0
    assert total["negatives_per_anchor"] == 6.0  # the other 3 instances, twice each


def test_empty_slots_are_never_selected():
    big_k, d, b = 16, 4, 5
    s = _bank(big_k, d).double()
    table = Table(300, d)
    g = torch.Generator().manual_seed(3)
    ids, q, k = _batch(b, d, g)
    first = s.select(q, k, make_ctx(ids, table))
    assert not first.mask.any()
    # only the positive: log(1)
    assert float(info_nce(first, 0.2).loss) == pytest.approx(0.0, abs=1e-12)
    for step in range(3):  # 15 of 16 slots filled
        ids, q, k = _batch(b, d, g)
        s.update(q, k, make_ctx(ids, table))
        negs = s.select(q, k, make_ctx(ids, table))
        empty = negs.pool_ids < 0
        assert int(empty.sum()) == big_k - b * (step + 1)
        assert not negs.mask[:, empty].any()


def test_k_equal_to_batch_and_m_zero_gives_in_batch_negatives():
    d, b = 8, 6
    s = _bank(b, d, m=0.0).double()
    assert s.key_momentum == 0.0
    table = Table(300, d)
    ids, q, k = _batch(b, d, torch.Generator().manual_seed(4))
    ctx = make_ctx(ids, table)
    s.select(q, k, ctx)
    s.update(q, k, ctx)
    negs = s.select(q, k, ctx)
    ref = in_batch_negatives(q, k, ids)
    keys_mask = ref.mask[:b, b:]  # (B, B): q-anchors against the key half of the pool
    keys = ref.pool[b:]  # (B, D)
    for i in range(b):
        got = sorted(tuple(r) for r in negs.pool[negs.mask[i]].tolist())
        want = sorted(tuple(r) for r in keys[keys_mask[i]].tolist())
        assert got == want and len(got) == b - 1
    assert torch.equal(negs.anchors, ref.anchors[:b]) and torch.equal(negs.positives, k)


def test_returned_pool_is_a_snapshot_not_the_live_queue():
    """The harness reads the ids (its meter) after update() has overwritten the queue."""
    big_k, d, b = 4, 4, 4
    s = _bank(big_k, d).double()
    table = Table(300, d)
    g = torch.Generator().manual_seed(5)
    ids, q, k = _batch(b, d, g)
    s.update(q, k, make_ctx(ids, table))
    ids2, q2, k2 = _batch(b, d, g)
    negs = s.select(q2, k2, make_ctx(ids2, table))
    s.update(q2, k2, make_ctx(ids2, table))
    assert torch.equal(negs.pool_ids, ids) and torch.equal(negs.pool, k)
    assert not negs.pool.requires_grad


def test_momentum_is_asked_for_and_config_is_checked():
    assert strategies.create("memory-bank", dim=4, n_train=10).key_momentum == 0.99
    with pytest.raises(StrategyError, match="K"):
        MemoryBankConfig(K=0)
    with pytest.raises(StrategyError, match="m"):
        MemoryBankConfig(m=1.0)
