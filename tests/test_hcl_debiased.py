"""hcl (Robinson et al. 2021) and debiased (Chuang et al. 2020): identities with in-batch
InfoNCE and loop-written references of the papers' losses, through harness.objectives.info_nce."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.objectives import info_nce
from negbench.strategies import StrategyError
from negbench.strategies.debiased import DebiasedConfig
from negbench.strategies.hcl import HCLConfig


# --------------------------------------------------------------------------- inputs
def ctx_for(ids: torch.Tensor, *, temperature: float = 0.2, mining: list | None = None):
    """conftest's context; these strategies never encode (the table is only a stand-in)."""
    return make_ctx(ids, Table(int(ids.max()) + 1, 2), temperature=temperature, mining=mining)


def unit_pair(b: int, d: int, seed: int, dtype=torch.float64, spread: float = 1.0):
    """(q, k) unit rows, k a noisy copy of q; ids a random subset of a larger set."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=dtype)
    k = q + spread * torch.randn(b, d, generator=g, dtype=dtype)
    ids = torch.randperm(10 * b, generator=g)[:b]
    return F.normalize(q, dim=1), F.normalize(k, dim=1), ids


def leaf(x):
    return x.clone().requires_grad_(True)


def loss_and_grads(name, cfg, q, k, ids, tau):
    q, k = leaf(q), leaf(k)
    strat = strategies.create(name, cfg, dim=q.shape[1], n_train=int(ids.max()) + 1)
    negs = strat.select(q, k, ctx_for(ids, temperature=tau))
    loss = info_nce(negs, tau).loss
    gq, gk = torch.autograd.grad(loss, (q, k))
    strat.check()
    return loss.detach(), gq, gk, negs


# --------------------------------------------------------------------------- loop references
def paper_loss(q, k, tau, tau_plus, beta=None, detach_imp=False):
    """The authors' estimator written out one anchor at a time (HCL when beta is given, the
    debiased loss of Chuang et al. otherwise): both views as anchors, N = 2B - 2 negatives,
    N_g clamped below at N e^{-1/tau}. Returns (loss, how many anchors hit the clamp)."""
    b = q.shape[0]
    out = torch.cat([q, k])
    n = 2 * b - 2
    floor = n * math.e ** (-1.0 / tau)
    losses, clamped = [], 0
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        pos = torch.exp(torch.dot(out[i], out[partner]) / tau)
        neg = [torch.exp(torch.dot(out[i], out[j]) / tau)
               for j in range(2 * b) if j not in (i, partner)]
        assert len(neg) == n
        if beta is None:
            total = sum(neg)
        else:
            imp = [torch.exp(beta * torch.log(x)) for x in neg]
            if detach_imp:
                imp = [x.detach() for x in imp]
            total = sum(w * x for w, x in zip(imp, neg, strict=True)) / (sum(imp) / n)
        ng = (-tau_plus * n * pos + total) / (1.0 - tau_plus)
        if float(ng.detach()) < floor:
            clamped += 1
        ng = torch.clamp(ng, min=floor)
        losses.append(-torch.log(pos / (pos + ng)))
    return sum(losses) / len(losses), clamped


def paper_loss_and_grads(q, k, tau, tau_plus, beta=None, detach_imp=False):
    q, k = leaf(q), leaf(k)
    loss, clamped = paper_loss(q, k, tau, tau_plus, beta, detach_imp)
    gq, gk = torch.autograd.grad(loss, (q, k))
    return loss.detach(), gq, gk, clamped


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hcl_beta0_tau0_is_in_batch_exactly(seed):
    q, k, ids = unit_pair(7, 5, seed)
    ref = loss_and_grads("in-batch", None, q, k, ids, 0.3)
    got = loss_and_grads("hcl", HCLConfig(beta=0.0, tau_plus=0.0), q, k, ids, 0.3)
    w = got[3].candidate_weights()
    assert w is None or torch.equal(w[got[3].mask], torch.ones_like(w[got[3].mask]))
    for r, g in zip(ref[:3], got[:3], strict=True):
        assert torch.equal(r, g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_tau0_is_in_batch_exactly(seed):
    q, k, ids = unit_pair(6, 4, seed)
    ref = loss_and_grads("in-batch", None, q, k, ids, 0.2)
    got = loss_and_grads("debiased", DebiasedConfig(tau_plus=0.0), q, k, ids, 0.2)
    for r, g in zip(ref[:3], got[:3], strict=True):
        assert torch.equal(r, g)


def test_hcl_selects_in_batch_negatives():
    q, k, ids = unit_pair(5, 3, 0)
    ib = strategies.create("in-batch", dim=3, n_train=50).select(q, k, ctx_for(ids))
    h = strategies.create("hcl", dim=3, n_train=50).select(q, k, ctx_for(ids))
    d = strategies.create("debiased", dim=3, n_train=50).select(q, k, ctx_for(ids))
    for negs in (h, d):
        assert torch.equal(negs.mask, ib.mask) and torch.equal(negs.pool, ib.pool)
        assert torch.equal(negs.anchor_ids, ib.anchor_ids) and negs.batch_views == 10
        assert negs.tau_plus == 0.1
    assert d.weights is None


# --------------------------------------------------------------------------- paper references
@pytest.mark.parametrize("beta,tau_plus,tau,seed", [
    (1.0, 0.1, 0.5, 0),  # the authors' STL-10 setting
    (0.5, 0.05, 0.2, 1),
    (2.0, 0.2, 0.3, 2),
])
def test_hcl_matches_paper_loss_and_gradient(beta, tau_plus, tau, seed):
    q, k, ids = unit_pair(6, 4, seed)
    ref_loss, ref_gq, ref_gk, _ = paper_loss_and_grads(q, k, tau, tau_plus, beta)
    loss, gq, gk, _ = loss_and_grads("hcl", HCLConfig(beta=beta, tau_plus=tau_plus),
                                     q, k, ids, tau)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, ref_gq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gk, ref_gk, rtol=1e-10, atol=1e-12)


def test_hcl_detached_weights_same_loss_other_gradient():
    q, k, ids = unit_pair(6, 4, 3)
    tau, cfg = 0.3, HCLConfig(beta=1.5, tau_plus=0.1, detach_weights=True)
    ref_loss, ref_gq, ref_gk, _ = paper_loss_and_grads(q, k, tau, 0.1, 1.5, detach_imp=True)
    loss, gq, gk, _ = loss_and_grads("hcl", cfg, q, k, ids, tau)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, ref_gq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gk, ref_gk, rtol=1e-10, atol=1e-12)
    _, gq_through, _, _ = loss_and_grads("hcl", HCLConfig(beta=1.5, tau_plus=0.1), q, k, ids, tau)
    assert not torch.allclose(gq, gq_through)


def test_hcl_clamp_branch_matches_paper():
    # near-collinear views, a large tau+: N_g falls under N e^{-1/tau} for some anchors
    q, k, ids = unit_pair(5, 3, 4, spread=0.05)
    tau, tau_plus, beta = 0.5, 0.45, 1.0
    ref_loss, ref_gq, _, clamped = paper_loss_and_grads(q, k, tau, tau_plus, beta)
    assert 0 < clamped
    loss, gq, _, _ = loss_and_grads("hcl", HCLConfig(beta=beta, tau_plus=tau_plus),
                                    q, k, ids, tau)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, ref_gq, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tau_plus,tau,seed,spread", [
    (0.1, 0.5, 0, 1.0), (0.2, 0.2, 1, 1.0), (0.45, 0.5, 4, 0.05),
])
def test_debiased_matches_paper_loss_and_gradient(tau_plus, tau, seed, spread):
    q, k, ids = unit_pair(6, 4, seed, spread=spread)
    ref_loss, ref_gq, ref_gk, clamped = paper_loss_and_grads(q, k, tau, tau_plus)
    if spread < 1:
        assert clamped > 0
    loss, gq, gk, _ = loss_and_grads("debiased", DebiasedConfig(tau_plus=tau_plus),
                                     q, k, ids, tau)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, ref_gq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gk, ref_gk, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- behaviour
def test_hcl_weights_mean_one_and_favour_hard_negatives():
    q, k, ids = unit_pair(8, 6, 5)
    strat = strategies.create("hcl", HCLConfig(beta=1.0), dim=6, n_train=80)
    negs = strat.select(q, k, ctx_for(ids, temperature=0.2))
    w, sel = negs.candidate_weights(), negs.mask
    assert torch.equal(w[~sel], torch.zeros_like(w[~sel]))
    mean = (w * sel).sum(1) / sel.sum(1)
    torch.testing.assert_close(mean, torch.ones_like(mean), rtol=1e-12, atol=1e-12)
    sim = negs.anchors @ negs.pool.T
    for a in range(negs.num_anchors):  # weights rise with similarity, row by row
        cols = sel[a].nonzero().flatten()
        order = sim[a, cols].argsort()
        assert torch.all(w[a, cols][order].diff() > 0)


def test_hcl_large_beta_stays_finite_in_float32():
    q, k, ids = unit_pair(16, 8, 6, dtype=torch.float32)
    loss, gq, gk, negs = loss_and_grads("hcl", HCLConfig(beta=2.0, tau_plus=0.1), q, k, ids,
                                        0.01)  # beta s / tau spans 400: e^{...} overflows
    assert torch.isfinite(loss) and torch.isfinite(gq).all() and torch.isfinite(gk).all()
    w = negs.candidate_weights()
    assert torch.isfinite(w).all() and (w[negs.mask] > 0).all()


def test_hcl_hands_its_product_to_the_objective_instead_of_charging_it():
    q, k, ids = unit_pair(5, 3, 0)
    q.requires_grad_()
    mining: list = []
    negs = strategies.create("hcl", dim=3, n_train=50).select(q, k, ctx_for(ids, mining=mining))
    assert mining == []  # the objective's FLOPs count the product it reuses
    assert negs.sim is not None and negs.sim.requires_grad
    torch.testing.assert_close(negs.sim, negs.anchors @ negs.pool.T)
    mining.clear()
    strategies.create("debiased", dim=3, n_train=50).select(q, k, ctx_for(ids, mining=mining))
    assert mining == []


@pytest.mark.parametrize("name,cfg_cls,kwargs,word", [
    ("hcl", HCLConfig, {"beta": -0.1}, "beta"),
    ("hcl", HCLConfig, {"beta": float("nan")}, "beta"),
    ("hcl", HCLConfig, {"tau_plus": 1.0}, "tau_plus"),
    ("hcl", HCLConfig, {"tau_plus": -0.01}, "tau_plus"),
    ("debiased", DebiasedConfig, {"tau_plus": 1.0}, "tau_plus"),
    ("debiased", DebiasedConfig, {"tau_plus": -0.5}, "tau_plus"),
])
def test_bad_config_raises(name, cfg_cls, kwargs, word):
    with pytest.raises(StrategyError, match=f"{name}: {word}"):
        cfg_cls(**kwargs)


def test_registered_with_search_spaces():
    for name in ("hcl", "debiased"):
        cls = strategies.get(name)
        assert cls.paper and cls.Config.space
        for knob in cls.Config.space:
            assert hasattr(cls.Config(), knob)


def test_importance_weights_backward_equals_autograd_of_the_plain_expression():
    """The written-out backward of the weights against autograd through the formula, float64,
    with some rows partly masked and one row empty."""
    from negbench.strategies.kernels import importance_weights

    g = torch.Generator().manual_seed(3)
    sim = (torch.rand(6, 9, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    sel = torch.rand(6, 9, generator=g) < 0.7
    sel[2] = False  # no negatives
    beta, tau = 0.8, 0.2
    w = importance_weights(sim, sel, beta, tau)
    upstream = torch.randn(6, 9, generator=g, dtype=torch.float64)
    (gw,) = torch.autograd.grad((w * upstream).sum(), sim)

    ref_sim = sim.detach().clone().requires_grad_()
    e = torch.exp(ref_sim * (beta / tau)) * sel
    n = sel.sum(1, keepdim=True).to(e.dtype)
    ref = e * n / e.sum(1, keepdim=True).clamp_min(1e-300)
    (gr,) = torch.autograd.grad((ref * upstream).sum(), ref_sim)
    torch.testing.assert_close(w.detach(), ref.detach())
    torch.testing.assert_close(gw, gr)
    assert torch.autograd.gradcheck(lambda s: importance_weights(s, sel, beta, tau), (sim,))
