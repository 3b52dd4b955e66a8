"""dynamic (ANCE): the rank window against a loop reference, refreshes exactly every R steps and
charged, the own instance never mined, the index form of the returned negatives."""

from __future__ import annotations

import pytest
import torch
from conftest import Table, make_ctx

import strategies
from harness.config import BudgetConfig, build_config
from harness.runner import Trainer
from strategies import StepContext, StrategyError
from strategies.dynamic import Dynamic, DynamicConfig


# --------------------------------------------------------------------------- helpers
def unit(n: int, d: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


class Recording(Table):
    """conftest's Table, also recording each encode's ids and grad flag."""

    def __init__(self, n: int, d: int, seed: int = 0):
        super().__init__(n, d, seed)
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def encode(self, ids: torch.Tensor, grad: bool) -> torch.Tensor:
        self.calls.append((ids.clone(), grad))
        return super().encode(ids, grad)


def reference_window(q, index, ids, r_min, r_max):
    """Loops: each anchor's items ranked by similarity (most similar first, ties by row), its
    own instance excluded, ranks r_min .. r_max-1."""
    out = []
    for b in range(q.shape[0]):
        own = int(ids[b])
        scored = []
        for j in range(index.shape[0]):
            if j == own:
                continue
            s = sum(float(x) * float(y) for x, y in zip(q[b], index[j], strict=True))
            scored.append((-s, j))
        scored.sort()
        out.append([j for _, j in scored[r_min:r_max]])
    return out


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("r_min,K", [(0, 3), (2, 3), (5, 1)])
@pytest.mark.parametrize("chunk", [1, 80, 1 << 22])  # 1 anchor, 2 anchors, all per chunk
def test_top_of_window_equals_loop_reference(r_min, K, chunk):
    table = Table(40, 5)
    g = torch.Generator().manual_seed(1)
    q, k = unit(6, 5, g), unit(6, 5, g)
    ids = torch.randperm(40, generator=g)[:6]
    s = Dynamic(DynamicConfig(K=K, r_min=r_min, r_max=20, chunk=chunk), dim=5, n_train=40)
    negs = s.select(q, k, make_ctx(ids, table))
    ref = reference_window(q, table.z.double(), ids, r_min, r_min + K)
    assert negs.candidate_ids().tolist() == ref
    assert negs.index.shape == (6, K) and negs.pool.shape == (6 * K, 5)
    assert torch.equal(negs.pool, table.z[negs.pool_ids])  # fresh encodes of the mined ids
    assert negs.mask is None and negs.weights is None


def test_sampled_window_equals_loop_reference():
    table = Table(50, 4, seed=3)
    g = torch.Generator().manual_seed(2)
    q, k = unit(7, 4, g), unit(7, 4, g)
    ids = torch.randperm(50, generator=g)[:7]
    cfg = DynamicConfig(K=4, r_min=3, r_max=15, pick="sample")
    negs = Dynamic(cfg, dim=4, n_train=50).select(q, k, make_ctx(ids, table, seed=11))
    window = reference_window(q, table.z.double(), ids, 3, 15)
    u = torch.rand((7, 12), generator=torch.Generator().manual_seed(11)).tolist()
    ref = []
    for b in range(7):
        order = sorted(range(12), key=lambda i, b=b: -u[b][i])[:4]  # K largest draws
        ref.append([window[b][i] for i in order])
    got = negs.candidate_ids().tolist()
    assert got == ref
    for b in range(7):
        assert len(set(got[b])) == 4 and set(got[b]) <= set(window[b])


def test_own_instance_never_selected():
    table = Table(12, 3)
    ids = torch.arange(12)
    q = table.z.double()  # each anchor's own instance is its most similar item
    k = q.flip(0)
    # the whole ranking (r_max clipped to n_train - 1 = 11), every rank taken
    s = Dynamic(DynamicConfig(K=11, r_min=0, r_max=500), dim=3, n_train=12)
    assert s.r_max == 11
    negs = s.select(q, k, make_ctx(ids, table))
    got = negs.candidate_ids()
    assert not bool((got == ids[:, None]).any())
    assert all(sorted(row) == [j for j in range(12) if j != b]
               for b, row in enumerate(got.tolist()))
    assert not bool(negs.own_instance().any())


def test_encodes_mined_items_with_the_configured_grad_and_charges_the_search():
    g = torch.Generator().manual_seed(0)
    q, k = unit(5, 4, g), unit(5, 4, g)
    ids = torch.arange(5)
    for grad in (True, False):
        table, mining = Recording(30, 4), []
        negs = Dynamic(DynamicConfig(K=3, r_max=10, grad=grad), dim=4, n_train=30).select(
            q, k, make_ctx(ids, table, mining=mining))
        (enc_ids, enc_grad), = table.calls
        assert enc_grad is grad and torch.equal(enc_ids, negs.pool_ids)
        assert enc_ids.shape == (15,) and table.encoded == 15
        assert mining == [5 * 30 * 4]


# --------------------------------------------------------------------------- refresh
def test_refreshes_exactly_every_R_steps():
    table = Table(20, 3)
    s = Dynamic(DynamicConfig(K=2, R=3, r_min=1, r_max=8), dim=3, n_train=20)
    g = torch.Generator().manual_seed(0)
    snapshots = {}
    for step in range(10):
        table.z = unit(20, 3, g, torch.float32)  # the encoder moves every step
        snapshots[step] = table.z.clone()
        ids = torch.randperm(20, generator=g)[:4]
        q, k = unit(4, 3, g), unit(4, 3, g)
        before = table.refreshes
        ctx = make_ctx(ids, table, step=step)
        negs = s.select(q, k, ctx)
        s.select(q, k, ctx)  # a second select in the same step: no second refresh
        assert table.refreshes - before == (1 if step % 3 == 0 else 0)
        last = step - step % 3
        assert torch.equal(s.index, snapshots[last])  # the index of the last refresh step
        ref = reference_window(q, snapshots[last].double(), ids, 1, 3)
        assert negs.candidate_ids().tolist() == ref
        s.update(q, k, ctx)
    assert table.refreshes == 4 == s.refreshes  # steps 0, 3, 6, 9


def test_first_step_not_on_the_grid_fills_the_index():
    table = Table(20, 3)
    s = Dynamic(DynamicConfig(K=2, R=5, r_max=8), dim=3, n_train=20)
    q = unit(2, 3, torch.Generator().manual_seed(0))
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=7))
    assert table.refreshes == 1 and torch.equal(s.index, table.z)
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=8))
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=10))
    assert table.refreshes == 2


def test_refresh_encodes_show_in_the_cost_meter():
    b, K, R, steps = 16, 4, 2, 5
    cfg = build_config("digits", "dynamic", 0, BudgetConfig("steps", steps),
                       {"batch_size": str(b), "strategy.K": str(K), "strategy.R": str(R),
                        "strategy.r_max": "32", "device": "cpu"})
    t = Trainer(cfg)
    t.train()
    n = t.n_train
    assert t.strategy.refreshes == 3  # steps 0, 2, 4
    assert t.cost.nograd_encodes == 3 * n
    assert t.cost.trained_samples == steps * (2 * b + b * K)  # mined items encoded with grad
    assert t.cost.mining_macs == steps * b * n * t.encoder.out_dim
    assert t.cost.state_bytes == n * t.encoder.out_dim * 4


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(K=0), dict(R=0), dict(r_min=-1), dict(r_min=10, r_max=12),
                                 dict(pick="best"), dict(chunk=0), dict(faiss_min_n=0)])
def test_bad_config_raises(bad):
    with pytest.raises(StrategyError, match="dynamic"):
        DynamicConfig(**bad)


def test_window_too_small_for_the_training_set_raises():
    with pytest.raises(StrategyError, match="n_train=10"):
        Dynamic(DynamicConfig(K=8, r_min=4, r_max=64), dim=4, n_train=10)


def test_registered():
    assert strategies.get("dynamic") is Dynamic


@pytest.mark.parametrize("pick", ["top", "sample"])
def test_sync_free_on_the_meta_device(pick):
    """Meta tensors hold no data: any host read (.item(), bool(), nonzero, x[mask], .tolist())
    raises, so a step that runs here never syncs."""
    n, d, b = 50, 8, 6

    def encode(ids, grad):
        return torch.randn(ids.shape[0], d, device="meta", requires_grad=grad)

    s = Dynamic(DynamicConfig(K=3, R=2, r_max=10, pick=pick, chunk=100), dim=d,
                n_train=n).to("meta")
    for step in range(3):
        ctx = StepContext(step=step, fraction=0.0, ids=torch.arange(b, device="meta"),
                          generator=torch.Generator(), n_train=n, encode=encode,
                          encode_all=lambda: torch.randn(n, d, device="meta"))
        q = torch.randn(b, d, device="meta", requires_grad=True)
        negs = s.select(q, q.detach(), ctx)
        negs.similarity().sum().backward()
        s.update(q.detach(), q.detach(), ctx)
    assert negs.index.device.type == "meta" and s.refreshes == 2
