"""The objectives against slow loop references (float64) and exact identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from negbench.harness.objectives import (
    ObjectiveConfig,
    ObjectiveError,
    info_nce,
    make_objective,
    triplet,
)
from negbench.strategies import Negatives


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _negs(a=6, p=9, d=5, weights=False, tau_plus=0.0, index=False, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    anchors, positives = _unit(a, d, seed=seed), _unit(a, d, seed=seed + 2)
    pool = _unit(p, d, seed=seed + 3)
    kw = {}
    if index:
        k = 4
        kw["index"] = torch.randint(p, (a, k), generator=g)
        kw["mask"] = torch.rand(a, k, generator=g) > 0.2
        shape = (a, k)
    else:
        kw["mask"] = torch.rand(a, p, generator=g) > 0.3
        shape = (a, p)
    if weights:
        kw["weights"] = torch.rand(*shape, generator=g, dtype=torch.float64) * 2
    return Negatives(anchors=anchors, positives=positives, anchor_ids=torch.arange(a),
                     pool=pool, pool_ids=torch.arange(100, 100 + p), tau_plus=tau_plus, **kw)


def _loop_info_nce(negs: Negatives, tau: float) -> float:
    """InfoNCE (with weights and Chuang et al.'s debiased estimator), one anchor at a time."""
    total = 0.0
    a_n = negs.anchors.shape[0]
    for i in range(a_n):
        a = negs.anchors[i]
        pos = math.exp(float(a @ negs.positives[i]) / tau)
        terms, n = 0.0, 0
        cols = (range(negs.pool.shape[0]) if negs.index is None
                else range(negs.index.shape[1]))
        for j in cols:
            if not bool(negs.mask[i, j]):
                continue
            row = j if negs.index is None else int(negs.index[i, j])
            w = 1.0 if negs.weights is None else float(negs.weights[i, j])
            terms += w * math.exp(float(a @ negs.pool[row]) / tau)
            n += 1
        tp = negs.tau_plus
        if tp > 0:
            ng = max((terms - tp * n * pos) / (1 - tp), n * math.exp(-1 / tau))
        else:
            ng = terms
        total += -math.log(pos / (pos + ng))
    return total / a_n


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
@pytest.mark.parametrize("index", [False, True])
def test_info_nce_matches_loop_reference(weights, tau_plus, index):
    negs = _negs(weights=weights, tau_plus=tau_plus, index=index)
    got = info_nce(negs, 0.3).loss.item()
    assert got == pytest.approx(_loop_info_nce(negs, 0.3), rel=1e-10, abs=1e-12)


def test_collinear_embeddings_give_log_k_plus_1():
    k, d = 7, 4
    v = F.normalize(torch.randn(1, d, dtype=torch.float64), dim=1)
    negs = Negatives(anchors=v.repeat(3, 1), positives=v.repeat(3, 1),
                     anchor_ids=torch.arange(3), pool=v.repeat(k, 1),
                     pool_ids=torch.arange(10, 10 + k), mask=torch.ones(3, k, dtype=torch.bool))
    for tau in (0.05, 0.2, 1.0):
        assert info_nce(negs, tau).loss.item() == pytest.approx(math.log(k + 1), rel=1e-12)


def test_nt_xent_equals_cross_entropy_form():
    """SimCLR's NT-Xent written as cross-entropy over a 2B x 2B matrix equals our InfoNCE over
    in-batch negatives."""
    from negbench.strategies.kernels import in_batch_negatives

    b, d, tau = 5, 8, 0.2
    q, k = _unit(b, d, seed=3), _unit(b, d, seed=4)
    negs = in_batch_negatives(q, k, torch.arange(b))
    z = torch.cat([q, k])
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    ref = F.cross_entropy(logits, target)
    assert info_nce(negs, tau).loss.item() == pytest.approx(ref.item(), rel=1e-12)


def test_unit_weights_equal_no_weights():
    negs = _negs()
    w = _negs()
    w.weights = torch.ones_like(w.mask, dtype=torch.float64)
    assert info_nce(negs, 0.2).loss.item() == pytest.approx(info_nce(w, 0.2).loss.item(),
                                                             rel=1e-12)


def _loop_triplet(negs: Negatives, m: float) -> float:
    num = den = 0.0
    for i in range(negs.anchors.shape[0]):
        d_ap = float(torch.linalg.vector_norm(negs.anchors[i] - negs.positives[i]))
        for j in range(negs.pool.shape[0]):
            if bool(negs.mask[i, j]):
                w = 1.0 if negs.weights is None else float(negs.weights[i, j])
                d_an = float(torch.linalg.vector_norm(negs.anchors[i] - negs.pool[j]))
                num += w * max(d_ap - d_an + m, 0.0)
                den += w
    return num / den


@pytest.mark.parametrize("weights", [False, True])
def test_triplet_matches_loop_reference(weights):
    negs = _negs(weights=weights)
    assert triplet(negs, 0.4).loss.item() == pytest.approx(_loop_triplet(negs, 0.4), rel=1e-9)


def test_gradients_flow_and_are_finite():
    negs = _negs(weights=True, tau_plus=0.1)
    negs.anchors.requires_grad_(True)
    for cfg in (ObjectiveConfig("infonce", 0.1), ObjectiveConfig("triplet", margin=0.3)):
        negs.anchors.grad = None
        make_objective(cfg)(negs).loss.backward()
        assert torch.isfinite(negs.anchors.grad).all() and negs.anchors.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(name="ntx"), dict(temperature=0.0), dict(margin=-1.0)])
def test_bad_objective_config_raises(bad):
    with pytest.raises(ObjectiveError):
        ObjectiveConfig(**bad)


def _loop_grad(negs: Negatives, tau: float) -> torch.Tensor:
    """d loss / d anchors of the loop reference, by autograd through the loop."""
    a = negs.anchors.detach().clone().requires_grad_(True)
    total = 0.0
    for i in range(a.shape[0]):
        pos = torch.exp(a[i] @ negs.positives[i] / tau)
        terms = torch.zeros((), dtype=a.dtype)
        n = 0
        for j in range(negs.width):
            if bool(negs.selected()[i, j]):
                row = j if negs.index is None else int(negs.index[i, j])
                w = 1.0 if negs.weights is None else float(negs.weights[i, j])
                terms = terms + w * torch.exp(a[i] @ negs.pool[row] / tau)
                n += 1
        if negs.tau_plus > 0:
            tp = negs.tau_plus
            ng = torch.maximum((terms - tp * n * pos) / (1 - tp),
                               torch.tensor(n * math.exp(-1 / tau), dtype=a.dtype))
        else:
            ng = terms
        total = total - torch.log(pos / (pos + ng))
    (total / a.shape[0]).backward()
    return a.grad


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
@pytest.mark.parametrize("index", [False, True])
def test_info_nce_gradient_matches_loop_reference(weights, tau_plus, index):
    negs = _negs(weights=weights, tau_plus=tau_plus, index=index, seed=4)
    negs.anchors = negs.anchors.detach().clone().requires_grad_(True)
    info_nce(negs, 0.3).loss.backward()
    torch.testing.assert_close(negs.anchors.grad, _loop_grad(negs, 0.3), rtol=1e-9, atol=1e-12)


def test_small_temperature_stays_finite_and_exact():
    negs = _negs(seed=2)
    got = info_nce(negs, 0.01).loss.item()
    assert math.isfinite(got)
    assert got == pytest.approx(_loop_info_nce(negs, 0.01), rel=1e-9)


@pytest.mark.parametrize("tilt_grad", [True, False])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
def test_a_tilt_equals_its_explicit_importance_weights(tilt_grad, tau_plus):
    """The objective's native tilt (HCL's q_beta) against the same weights formed explicitly
    (``candidate_weights``) and fed through the generic weighted path: same loss, same gradient
    for anchors, positives and pool, an anchor without negatives included."""
    from dataclasses import replace

    base = _negs(a=7, p=10, tau_plus=tau_plus, seed=5)
    base.mask[3] = False  # an anchor with no negative at all
    leaves = [t.detach().clone().requires_grad_(True)
              for t in (base.anchors, base.positives, base.pool)]
    tilted = replace(base, anchors=leaves[0], positives=leaves[1], pool=leaves[2], tilt=4.0,
                     tilt_grad=tilt_grad)
    loss = info_nce(tilted, 0.3).loss
    grads = torch.autograd.grad(loss, leaves)

    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    ref = replace(base, anchors=ref_leaves[0], positives=ref_leaves[1], pool=ref_leaves[2],
                  tilt=4.0, tilt_grad=tilt_grad)
    explicit = replace(ref, weights=ref.candidate_weights(), tilt=0.0)
    assert explicit.weights.requires_grad == tilt_grad
    ref_loss = info_nce(explicit, 0.3).loss
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    # the tilt changes the loss: it is not ignored
    assert not torch.isclose(loss, info_nce(replace(base, tilt=0.0), 0.3).loss)


def _loop_hardness(negs: Negatives, tau: float, alpha: float) -> tuple[float, torch.Tensor]:
    """InfoNCE with alpha * stopgrad(s_n) added to each negative's logit, written as that sum of
    logits one anchor at a time; (loss, d loss / d anchors) by autograd through the loop."""
    a = negs.anchors.detach().clone().requires_grad_(True)
    total = torch.zeros((), dtype=a.dtype)
    for i in range(a.shape[0]):
        logits = [a[i] @ negs.positives[i] / tau]
        for j in range(negs.width):
            if bool(negs.selected()[i, j]):
                row = j if negs.index is None else int(negs.index[i, j])
                w = 1.0 if negs.weights is None else float(negs.weights[i, j])
                s = a[i] @ negs.pool[row]
                logits.append(s / tau + alpha * s.detach() + math.log(w))
        total = total - (logits[0] - torch.logsumexp(torch.stack(logits), 0))
    total = total / a.shape[0]
    total.backward()
    return total.item(), a.grad


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("index", [False, True])
@pytest.mark.parametrize("tau", [0.3, 0.01])  # the fused path and the small-tau path
def test_hardness_alpha_matches_its_logit_form(weights, index, tau):
    negs = _negs(weights=weights, index=index, seed=6)
    want, want_grad = _loop_hardness(negs, tau, 2.5)
    negs.anchors = negs.anchors.detach().clone().requires_grad_(True)
    out = info_nce(negs, tau, hardness_alpha=2.5)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(negs.anchors.grad, want_grad, rtol=1e-8, atol=1e-12)
    plain = info_nce(negs, tau).loss.item()
    assert out.loss.item() > plain  # harder negatives weigh more: the loss rises
    assert info_nce(negs, tau, hardness_alpha=0.0).loss.item() == plain


def test_hardness_alpha_config_and_what_it_refuses():
    assert make_objective(ObjectiveConfig(hardness_alpha=1.0))
    for bad in (dict(hardness_alpha=-1.0), dict(hardness_alpha=25.0),
                dict(name="triplet", hardness_alpha=1.0)):
        with pytest.raises(ObjectiveError):
            ObjectiveConfig(**bad)
    negs = _negs()
    negs.tilt = 1.0
    with pytest.raises(ObjectiveError, match="tilt"):
        info_nce(negs, 0.3, hardness_alpha=1.0)
