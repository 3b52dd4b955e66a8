"""dynamic (ANCE): the rank window against a loop reference (the per-item table found at each
refresh, and the step mode's per-anchor search), refreshes exactly every R steps and charged, no
search in an ordinary step of the refresh mode, the own instance never mined, the index form of
the returned negatives."""

from __future__ import annotations

import pytest
import torch
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.runner import Trainer
from negbench.strategies import StepContext, StrategyError
from negbench.strategies.dynamic import Dynamic, DynamicConfig


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


def reference_table(index, r_min, r_max):
    """Loops: every item's window, queried with its own index row (the refresh mode's table)."""
    return reference_window(index, index, torch.arange(index.shape[0]), r_min, r_max)


def sampled(window, u, K):
    """Loops: the K entries of each row of ``window`` with the largest uniform draws ``u``."""
    out = []
    for b, row in enumerate(window):
        order = sorted(range(len(row)), key=lambda i, b=b: -u[b][i])[:K]
        out.append([row[i] for i in order])
    return out


# --------------------------------------------------------------------------- refresh-mode table
@pytest.mark.parametrize("pick,r_min,K", [("top", 0, 3), ("top", 2, 3), ("top", 5, 1),
                                          ("sample", 0, 3), ("sample", 3, 4)])
# 1, 2, 3 (40 = 13 x 3 + 1: a short last chunk) or all items per chunk
@pytest.mark.parametrize("chunk", [1, 80, 120, 1 << 22])
def test_refresh_table_equals_loop_reference(pick, r_min, K, chunk):
    n, d, r_max = 40, 5, 20
    table = Table(n, d, seed=4)
    s = Dynamic(DynamicConfig(K=K, r_min=r_min, r_max=r_max, pick=pick, chunk=chunk), dim=d,
                n_train=n)
    g = torch.Generator().manual_seed(1)
    q, k = unit(6, d, g), unit(6, d, g)
    ids = torch.randperm(n, generator=g)[:6]
    negs = s.select(q, k, make_ctx(ids, table, seed=5))
    end = r_min + K if pick == "top" else r_max
    ref = reference_table(table.z.double(), r_min, end)  # N rows of end - r_min index rows
    assert s.neighbours.dtype == torch.long and s.neighbours.tolist() == ref
    window = [ref[i] for i in ids.tolist()]
    if pick == "top":
        want = window
    else:
        u = torch.rand((6, r_max - r_min), generator=torch.Generator().manual_seed(5)).tolist()
        want = sampled(window, u, K)
    assert negs.candidate_ids().tolist() == want
    assert negs.index.shape == (6, K) and negs.pool.shape == (6 * K, d)
    assert torch.equal(negs.pool, table.z[negs.pool_ids])  # fresh encodes of the mined ids
    assert negs.mask is None and negs.weights is None


@pytest.mark.parametrize("pick", ["top", "sample"])
def test_refresh_mode_equals_step_mode_queried_with_the_index_rows(pick):
    """On a refresh step, the refresh mode selects what the step mode selects for anchors whose
    query is their own index embedding (ANCE's query at the refresh)."""
    n, d = 60, 6
    table = Table(n, d, seed=7)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:9]
    got = {}
    for search in ("refresh", "step"):
        cfg = DynamicConfig(K=4, r_min=2, r_max=30, pick=pick, search=search)
        q = table.z[ids]  # (9, D) the index rows of the anchors
        negs = Dynamic(cfg, dim=d, n_train=n).select(q, q, make_ctx(ids, table, seed=2))
        got[search] = negs.candidate_ids()
    assert torch.equal(got["refresh"], got["step"])


def test_refresh_mode_ignores_the_step_views():
    """Between refreshes an item's window is fixed: any view of it mines the same negatives."""
    table = Table(30, 4)
    s = Dynamic(DynamicConfig(K=3, R=10, r_max=12), dim=4, n_train=30)
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 17, 8])
    first = s.select(unit(3, 4, g), unit(3, 4, g), make_ctx(ids, table, step=0)).candidate_ids()
    for step in range(1, 4):
        q = unit(3, 4, g)
        negs = s.select(q, q, make_ctx(ids, table, step=step))
        assert torch.equal(negs.candidate_ids(), first)


@pytest.mark.parametrize("pick", ["top", "sample"])
def test_refresh_mode_searches_only_at_the_refresh(pick, monkeypatch):
    n, d, R = 30, 4, 4
    table = Table(n, d)
    s = Dynamic(DynamicConfig(K=3, R=R, r_max=12, pick=pick), dim=d, n_train=n)
    searches = []
    real = s.ranked
    monkeypatch.setattr(s, "ranked", lambda *a: searches.append(a[0].shape[0]) or real(*a))
    g = torch.Generator().manual_seed(0)
    for step in range(2 * R + 1):
        mining = []
        q = unit(5, d, g)
        s.select(q, q, make_ctx(torch.randperm(n, generator=g)[:5], table, step=step,
                                mining=mining))
        refresh = step % R == 0
        assert mining == ([n * n * d] if refresh else [])  # the N x N x D search, charged once
        assert searches == ([n] if refresh else [])  # all N items query, at the refresh only
        searches.clear()


@pytest.mark.parametrize("pick,width", [("top", 3), ("sample", 11 - 2)])
def test_the_table_is_state(pick, width):
    """The window table is counted as state: (N, K) for top, (N, r_max - r_min) to sample
    (r_max clipped to n_train - 1); the step mode keeps none."""
    n, d = 12, 4
    s = Dynamic(DynamicConfig(K=3, r_max=64, pick=pick), dim=d, n_train=n)
    assert s.neighbours.shape == (n, width)
    assert s.state_bytes() == n * d * 4 + n * width * 8
    step = Dynamic(DynamicConfig(K=3, r_max=64, pick=pick, search="step"), dim=d, n_train=n)
    assert step.neighbours.shape == (n, 0) and step.state_bytes() == n * d * 4


def test_defaults():
    cfg = DynamicConfig()
    assert cfg.search == "refresh" and cfg.R == 0 and cfg.pick == "top"


@pytest.mark.parametrize("n,b,period", [(30, 8, 4), (32, 8, 4), (33, 8, 5), (5, 8, 1)])
def test_default_refreshes_once_per_epoch(n, b, period):
    """R = 0: a refresh every ceil(n_train / B) steps, as many as an epoch of batches takes."""
    d = 3
    s = Dynamic(DynamicConfig(K=1, r_min=0, r_max=2), dim=d, n_train=n)
    table = Table(n, d)
    g = torch.Generator().manual_seed(0)
    refreshed = []
    for step in range(3 * period + 1):
        ids = torch.randperm(n, generator=g)[: min(b, n)]
        q = torch.nn.functional.normalize(torch.randn(len(ids), d, generator=g), dim=1)
        before = table.refreshes
        s.select(q, q, make_ctx(ids, table, step=step))
        if table.refreshes > before:
            refreshed.append(step)
    assert s.period(b) == period
    assert refreshed == list(range(0, 3 * period + 1, period))


# --------------------------------------------------------------------------- step mode
@pytest.mark.parametrize("r_min,K", [(0, 3), (2, 3), (5, 1)])
# 1, 2, 4 (6 = 4 + 2: a short last chunk) or all anchors per chunk
@pytest.mark.parametrize("chunk", [1, 80, 160, 1 << 22])
def test_step_mode_top_of_window_equals_loop_reference(r_min, K, chunk):
    table = Table(40, 5)
    g = torch.Generator().manual_seed(1)
    q, k = unit(6, 5, g), unit(6, 5, g)
    ids = torch.randperm(40, generator=g)[:6]
    cfg = DynamicConfig(K=K, r_min=r_min, r_max=20, chunk=chunk, search="step")
    negs = Dynamic(cfg, dim=5, n_train=40).select(q, k, make_ctx(ids, table))
    ref = reference_window(q, table.z.double(), ids, r_min, r_min + K)
    assert negs.candidate_ids().tolist() == ref
    assert negs.index.shape == (6, K) and negs.pool.shape == (6 * K, 5)
    assert torch.equal(negs.pool, table.z[negs.pool_ids])  # fresh encodes of the mined ids
    assert negs.mask is None and negs.weights is None


def test_step_mode_sampled_window_equals_loop_reference():
    table = Table(50, 4, seed=3)
    g = torch.Generator().manual_seed(2)
    q, k = unit(7, 4, g), unit(7, 4, g)
    ids = torch.randperm(50, generator=g)[:7]
    cfg = DynamicConfig(K=4, r_min=3, r_max=15, pick="sample", search="step")
    negs = Dynamic(cfg, dim=4, n_train=50).select(q, k, make_ctx(ids, table, seed=11))
    window = reference_window(q, table.z.double(), ids, 3, 15)
    u = torch.rand((7, 12), generator=torch.Generator().manual_seed(11)).tolist()
    ref = sampled(window, u, 4)
    got = negs.candidate_ids().tolist()
    assert got == ref
    for b in range(7):
        assert len(set(got[b])) == 4 and set(got[b]) <= set(window[b])


# --------------------------------------------------------------------------- both modes
@pytest.mark.parametrize("search", ["refresh", "step"])
def test_own_instance_never_selected(search):
    table = Table(12, 3)
    ids = torch.arange(12)
    q = table.z.double()  # each anchor's own instance is its most similar item
    k = q.flip(0)
    # the whole ranking (r_max clipped to n_train - 1 = 11), every rank taken
    s = Dynamic(DynamicConfig(K=11, r_min=0, r_max=500, search=search), dim=3, n_train=12)
    assert s.r_max == 11
    negs = s.select(q, k, make_ctx(ids, table))
    got = negs.candidate_ids()
    assert not bool((got == ids[:, None]).any())
    assert all(sorted(row) == [j for j in range(12) if j != b]
               for b, row in enumerate(got.tolist()))
    assert not bool(negs.own_instance().any())


@pytest.mark.parametrize("search", ["refresh", "step"])
def test_encodes_mined_items_with_the_configured_grad_and_charges_the_search(search):
    g = torch.Generator().manual_seed(0)
    q, k = unit(5, 4, g), unit(5, 4, g)
    ids = torch.arange(5)
    for grad in (True, False):
        table, mining = Recording(30, 4), []
        cfg = DynamicConfig(K=3, r_max=10, grad=grad, search=search)
        negs = Dynamic(cfg, dim=4, n_train=30).select(q, k, make_ctx(ids, table, mining=mining))
        (enc_ids, enc_grad), = table.calls
        assert enc_grad is grad and torch.equal(enc_ids, negs.pool_ids)
        assert enc_ids.shape == (15,) and table.encoded == 15
        # the refresh's 30 x 30 x D search, or the step's 5 anchors x 30 x D
        assert mining == [(30 if search == "refresh" else 5) * 30 * 4]


@pytest.mark.parametrize("search", ["refresh", "step"])
def test_sim_equals_the_objective_recomputation_with_its_gradients(search):
    """Negatives.sim (taken by the objective instead of its own gather and product) equals the
    anchors against each selected candidate, and carries the same gradients to both."""
    table = Table(40, 6, seed=2)
    leaves = []

    def encode(ids, grad):  # a trained encode: a fresh leaf requiring grad, like a network's
        leaves.append(table.z[ids].clone().requires_grad_(grad))
        return leaves[-1]

    ids = torch.tensor([5, 0, 33, 12, 7])
    q = unit(5, 6, torch.Generator().manual_seed(9), torch.float32).requires_grad_()
    s = Dynamic(DynamicConfig(K=4, r_max=16, search=search), dim=6, n_train=40)
    ctx = make_ctx(ids, table)
    ctx.encode = encode
    negs = s.select(q, q.detach(), ctx)
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    got = negs.similarity()
    (got * w).sum().backward()
    g_q, g_pool = q.grad.clone(), leaves[-1].grad.clone()
    q.grad, leaves[-1].grad = None, None
    want = torch.einsum("ad,akd->ak", q, negs.pool[negs.index])  # (A, K)
    (want * w).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_q, q.grad)
    torch.testing.assert_close(g_pool, leaves[-1].grad)


# --------------------------------------------------------------------------- refresh
@pytest.mark.parametrize("search", ["refresh", "step"])
def test_refreshes_exactly_every_R_steps(search):
    table = Table(20, 3)
    s = Dynamic(DynamicConfig(K=2, R=3, r_min=1, r_max=8, search=search), dim=3, n_train=20)
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
        if search == "refresh":  # the windows found at the last refresh, from its index
            rows = reference_table(snapshots[last].double(), 1, 3)
            ref = [rows[i] for i in ids.tolist()]
        else:  # the step's anchors searching the last refresh's index
            ref = reference_window(q, snapshots[last].double(), ids, 1, 3)
        assert negs.candidate_ids().tolist() == ref
        s.update(q, k, ctx)
    assert table.refreshes == 4 == s.refreshes  # steps 0, 3, 6, 9


@pytest.mark.parametrize("search", ["refresh", "step"])
def test_first_step_not_on_the_grid_fills_the_index(search):
    table = Table(20, 3)
    s = Dynamic(DynamicConfig(K=2, R=5, r_max=8, search=search), dim=3, n_train=20)
    q = unit(2, 3, torch.Generator().manual_seed(0))
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=7))
    assert table.refreshes == 1 and torch.equal(s.index, table.z)
    if search == "refresh":
        assert s.neighbours.tolist() == reference_table(table.z.double(), 2, 4)
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=8))
    s.select(q, q, make_ctx(torch.tensor([0, 1]), table, step=10))
    assert table.refreshes == 2


@pytest.mark.parametrize("search", ["refresh", "step"])
def test_refresh_encodes_show_in_the_cost_meter(search):
    b, K, R, steps = 16, 4, 2, 5
    cfg = build_config("digits", "dynamic", 0, BudgetConfig("steps", steps),
                       {"batch_size": str(b), "strategy.K": str(K), "strategy.R": str(R),
                        "strategy.r_max": "32", "strategy.search": search, "device": "cpu"})
    t = Trainer(cfg)
    t.train()
    n, d = t.n_train, t.encoder.out_dim
    assert t.strategy.refreshes == 3  # steps 0, 2, 4
    assert t.cost.nograd_encodes == 3 * n
    assert t.cost.trained_samples == steps * (2 * b + b * K)  # mined items encoded with grad
    if search == "refresh":  # an N x N x D search at each refresh, none in the steps
        assert t.cost.mining_macs == 3 * n * n * d
        assert t.cost.state_bytes == n * d * 4 + n * K * 8  # the index and the (N, K) table
    else:  # each step's B anchors against the whole index
        assert t.cost.mining_macs == steps * b * n * d
        assert t.cost.state_bytes == n * d * 4


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(K=0), dict(R=-1), dict(r_min=-1), dict(r_min=10, r_max=12),
                                 dict(pick="best"), dict(search="ann"), dict(chunk=0),
                                 dict(faiss_min_n=0)])
def test_bad_config_raises(bad):
    with pytest.raises(StrategyError, match="dynamic"):
        DynamicConfig(**bad)


def test_window_too_small_for_the_training_set_raises():
    with pytest.raises(StrategyError, match="n_train=10"):
        Dynamic(DynamicConfig(K=8, r_min=4, r_max=64), dim=4, n_train=10)


def test_registered():
    assert strategies.get("dynamic") is Dynamic


@pytest.mark.parametrize("search", ["refresh", "step"])
@pytest.mark.parametrize("pick", ["top", "sample"])
def test_sync_free_on_the_meta_device(pick, search):
    """Meta tensors hold no data: any host read (.item(), bool(), nonzero, x[mask], .tolist())
    raises, so a step that runs here never syncs."""
    n, d, b = 50, 8, 6

    def encode(ids, grad):
        return torch.randn(ids.shape[0], d, device="meta", requires_grad=grad)

    s = Dynamic(DynamicConfig(K=3, R=2, r_max=10, pick=pick, search=search, chunk=100), dim=d,
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
