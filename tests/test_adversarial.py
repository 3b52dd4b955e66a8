"""adversarial (AdCo): the closed-form ascent gradient against autograd on a loop-written
InfoNCE, the update against a loop reference, the negatives getting harder, the nearest-key
label sources, and the encoder's backward leaving the negatives alone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.metrics import false_negative_matrix
from negbench.harness.objectives import info_nce
from negbench.strategies import StrategyError
from negbench.strategies.adversarial import AdversarialConfig, ascent_gradient


def _inputs(b: int, d: int, seed: int, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(n, generator=g)[:b]
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(q + 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return ids, q, k


def _loop_infonce(w: torch.Tensor, q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of anchors q (positives k) against the normalized rows of w, in plain loops."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = torch.exp(torch.dot(q[i], k[i]) / tau)
        denom = pos
        for j in range(w.shape[0]):
            n_j = w[j] / torch.sqrt(sum(w[j, c] ** 2 for c in range(w.shape[1])))
            denom = denom + torch.exp(torch.dot(q[i], n_j) / tau)
        total = total - torch.log(pos / denom)
    return total / q.shape[0]


def _autograd_gradient(w, q, k, tau):
    w = w.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loop_infonce(w, q, k, tau), w)
    return grad


def _adversary(m: int, d: int, **kw):
    torch.manual_seed(0)
    cfg = AdversarialConfig(M=m, **kw)
    s = strategies.create("adversarial", cfg, dim=d, n_train=300).double()
    # rows drawn unit in float32 are unit to ~1e-8 only in float64: put them back on the sphere
    # at float64 precision (the ascent takes ||W_j|| = 1)
    s.W.copy_(F.normalize(s.W, dim=1))
    return s


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_ascent_gradient_matches_autograd_on_a_loop_infonce(tau):
    b, m, d = 5, 7, 4
    _, q, k = _inputs(b, d, seed=1)
    g = torch.Generator().manual_seed(2)
    # unit rows, as the strategy keeps them; the reference normalizes w inside the loss and
    # differentiates through that normalization
    w = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    torch.testing.assert_close(ascent_gradient(w, q, k, tau), _autograd_gradient(w, q, k, tau),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ascent_gradient(w, q, k, tau, q @ w.T),
                               _autograd_gradient(w, q, k, tau), rtol=1e-10, atol=1e-12)


def test_update_matches_a_loop_reference_of_filling_then_momentum_ascent():
    b, m, d = 4, 10, 5  # the rows fill over three updates: 0-3, 4-7, then 8-9
    lr, tau, mu = 0.7, 0.2, 0.9
    s = _adversary(m, d, lr_neg=lr, tau_neg=tau, mu=mu)
    table = Table(300, d)
    w = s.W.detach().clone()
    v = torch.zeros_like(w)
    filled = 0
    for step in range(5):
        ids, q, k = _inputs(b, d, seed=10 + step)
        s.update(q, k, make_ctx(ids, table))
        grad = _autograd_gradient(w, q, k, tau)
        for j in range(m):
            if j < filled:  # v <- mu v + dL/dW; W <- normalize(W + lr v)
                v[j] = mu * v[j] + grad[j]
                row = w[j] + lr * v[j]
            elif j < filled + b:  # a row not yet filled takes a key
                row = k[j - filled]
            else:
                continue
            w[j] = row / math.sqrt(sum(float(x) ** 2 for x in row))
        filled = min(filled + b, m)
        torch.testing.assert_close(s.W.detach(), w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s.velocity, v, rtol=1e-10, atol=1e-12)
        assert int(s.filled) == filled


def test_negatives_get_harder_under_ascent_on_fixed_anchors():
    b, d = 32, 16
    s = _adversary(64, d)  # default lr_neg, tau_neg and mu
    s.filled.fill_(64)  # skip the filling: every (random) row ascends from the first update
    table = Table(300, d)
    g = torch.Generator().manual_seed(3)
    ids = torch.randperm(300, generator=g)[:b]
    centres = F.normalize(torch.randn(3, d, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(b, d, generator=g, dtype=torch.float64)
    q = F.normalize(centres[torch.arange(b) % 3] + 0.4 * noise, dim=1)  # clustered, as trained
    k = F.normalize(q + 0.3 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    ctx = make_ctx(ids, table)
    sims, hardest, losses = [], [], []
    for step in range(6):
        if step:
            s.update(q, k, ctx)
        negs = s.select(q, k, ctx)
        sim = negs.similarity()  # (B, M)
        sims.append(sim.mean().item())
        hardest.append(sim.amax(1).mean().item())
        losses.append(info_nce(negs, 0.2).loss.item())
    # The ascent's equilibrium on fixed anchors puts negatives on individual anchors, so the mean
    # over all (anchor, negative) pairs rises by a few hundredths, the hardest one by far more.
    assert all(b_ > a_ for a_, b_ in zip(sims, sims[1:], strict=False)), sims
    assert sims[-1] > sims[0] + 0.05, sims
    assert hardest[-1] > hardest[0] + 0.3, hardest
    assert losses[-1] > losses[0] + 0.5, losses


def test_sources_are_the_nearest_query_view_of_the_batch():
    b, m, d = 9, 11, 5
    s = _adversary(m, d)
    table = Table(300, d)
    ids, q, k = _inputs(b, d, seed=4)
    mining: list[int] = []
    negs = s.select(q, k, make_ctx(ids, table, mining=mining))
    assert (negs.pool_ids == -1).all()
    assert negs.sources.shape == (m, 1) and (negs.source_weights == 1).all()
    for j in range(m):
        sims = [sum(float(negs.pool[j, c]) * float(q[i, c]) for c in range(d)) for i in range(b)]
        assert int(negs.sources[j, 0]) == int(ids[max(range(b), key=sims.__getitem__)])
    assert mining == []  # the (B, M) product is the objective's (negs.sim)
    torch.testing.assert_close(negs.sim, q @ negs.pool.T)
    # the harness counts a learned negative by its source's label
    labels = torch.arange(300) % 3
    fn = false_negative_matrix(negs, labels)  # (B, M)
    want = labels[ids][:, None] == labels[negs.sources[:, 0]][None, :]
    assert torch.equal(fn, want.to(fn.dtype))


def test_encoder_backward_leaves_the_negatives_alone_and_costs_are_charged():
    b, m, d = 8, 16, 6
    s = _adversary(m, d)
    table = Table(300, d)
    ids, q, k = _inputs(b, d, seed=5)
    q = q.clone().requires_grad_(True)
    mining: list[int] = []
    adversary: list[int] = []
    ctx = make_ctx(ids, table, mining=mining)
    ctx.charge_adversary = adversary.append
    before = s.W.detach().clone()
    negs = s.select(q, k, ctx)
    assert not negs.pool.requires_grad
    info_nce(negs, 0.2).loss.backward()
    assert q.grad is not None and s.W.grad is None
    assert torch.equal(s.W.detach(), before)
    s.update(q.detach(), k, ctx)
    assert not torch.equal(s.W.detach(), before)
    torch.testing.assert_close(s.W.norm(dim=1), torch.ones(m, dtype=torch.float64))
    assert mining == [b * m * d] and adversary == [m * d]  # the ascent reused negs.sim
    assert s.state_bytes() == 2 * m * d * 8 + 8  # W, its velocity and the fill counter


def test_key_momentum_and_config_checks():
    assert strategies.create("adversarial", dim=4, n_train=10).key_momentum == 0.99
    no_key = AdversarialConfig(m=None)
    assert strategies.create("adversarial", no_key, dim=4, n_train=10).key_momentum is None
    for bad in ({"M": 0}, {"lr_neg": 0.0}, {"tau_neg": -1.0}, {"mu": 1.0}, {"m": 1.5},
                {"lr_neg": float("nan")}):
        with pytest.raises(StrategyError, match=next(iter(bad))):
            AdversarialConfig(**bad)


def test_update_reusing_the_steps_similarities_equals_recomputing_them():
    b, m, d = 8, 12, 6
    ids, q, k = _inputs(b, d, seed=6)
    table = Table(300, d)
    torch.manual_seed(0)
    reused = _adversary(m, d)
    torch.manual_seed(0)
    fresh = _adversary(m, d)
    for step in range(4):  # filling, then ascent steps
        ids, q, k = _inputs(b, d, seed=10 + step)
        q = q.clone().requires_grad_(True)
        mining: list[int] = []
        reused.select(q, k, make_ctx(ids, table, mining=mining))
        reused.update(q.detach(), k, make_ctx(ids, table, mining=mining))
        fresh.update(q.detach(), k, make_ctx(ids, table))  # no select: recomputes q @ n.T
        torch.testing.assert_close(reused.W.detach(), fresh.W.detach(), rtol=1e-12, atol=1e-12)
        assert mining == [b * m * d]  # only the ascent's (M, D) product
    # an update with another q must not reuse the last select's similarities
    ids2, q2, k2 = _inputs(b, d, seed=99)
    reused.select(q, k, make_ctx(ids, table))
    reused.update(q2, k2, make_ctx(ids2, table))
    fresh.update(q2, k2, make_ctx(ids2, table))
    torch.testing.assert_close(reused.W.detach(), fresh.W.detach(), rtol=1e-12, atol=1e-12)
