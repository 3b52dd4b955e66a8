"""Training objectives over a strategy's :class:`~negbench.strategies.Negatives`.

The objective is fixed for a whole ablation and chosen independently of the strategy. Every
objective returns the loss and the (A, P) cosine similarities it computed, detached, so that the
meters reuse them instead of multiplying the embeddings a second time.

- ``infonce``: InfoNCE / NT-Xent (Oord et al. 2018; Chen et al. 2020) with temperature tau,
  optional per-negative weights, and the debiased estimator of Chuang et al. 2020 when the
  strategy sets ``tau_plus`` (HCL, Robinson et al. 2021, is that estimator with importance
  weights):

      N_g = max( (sum_n w_n e^{s_n/tau} - tau+ N e^{s_p/tau}) / (1 - tau+),  N e^{-1/tau} )
      loss = -log( e^{s_p/tau} / (e^{s_p/tau} + N_g) )

  With unit weights and tau+ = 0, N_g is the plain sum and the loss is ordinary InfoNCE.
  ``hardness_alpha`` = alpha > 0 adds alpha * stopgrad(s_n) to each negative's logit
  s_n / tau (hardness weighting, as recent text-embedding recipes train with): the same as a
  per-negative weight e^{alpha sg(s_n)} on the denominator's terms, which is how it is applied
  (times any weights of the strategy). 0 is plain InfoNCE. It is refused with HCL's tilt (both
  reweight negatives by their hardness) and with several positives (SupCon).
- ``triplet``: the triplet-margin loss (Schroff et al. 2015) on unit-sphere distances,
  averaged over every selected (anchor, negative) pair with the strategy's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from negbench import NegbenchError
from negbench.strategies import Negatives


class ObjectiveError(NegbenchError, ValueError):
    pass


# e^{alpha s} <= e^20 ~ 5e8 keeps every weighted term finite in float32 (with e^{s/tau} <= e^40)
MAX_ALPHA = 20.0


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "infonce"  # infonce | triplet
    temperature: float = 0.2  # tau of InfoNCE
    margin: float = 0.5  # m of the triplet loss, on distances between unit vectors (in [0, 2])
    hardness_alpha: float = 0.0  # infonce: + alpha * stopgrad(s_n) on each negative's logit

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ObjectiveError(
                f"objective.name must be one of {', '.join(OBJECTIVES)}; got {self.name!r}"
            )
        if not self.temperature > 0:
            raise ObjectiveError(f"objective.temperature must be > 0, got {self.temperature}")
        if not self.margin >= 0:
            raise ObjectiveError(f"objective.margin must be >= 0, got {self.margin}")
        if not 0.0 <= self.hardness_alpha <= MAX_ALPHA:
            raise ObjectiveError(f"objective.hardness_alpha must lie in [0, {MAX_ALPHA:g}], got "
                                 f"{self.hardness_alpha}")
        if self.hardness_alpha and self.name != "infonce":
            raise ObjectiveError("objective.hardness_alpha applies to infonce only")


@dataclass
class ObjectiveOut:
    loss: Tensor  # () scalar
    sim: Tensor  # (A, P|K) cosine similarities anchor x candidate, detached


class _ShiftedNCE(torch.autograd.Function):
    """Per-anchor InfoNCE from the (A, W) similarities in a few fused passes.

    Forward, with c = 1/tau and the constant shift 1/tau (cosines are at most 1, so no exponent
    is positive, and with 2/tau <= 80 none falls below -80, so nothing over- or underflows):

        e = exp(c (s - 1)),  S = sum_w e w,  e_p = exp(c (s_p - 1))
        N_g = S, or with tau+ > 0: max((S - tau+ n e_p) / (1 - tau+), n exp(-2c))
        loss = log(e_p + N_g) - c (s_p - 1)

    The (A, W) pass computes exp(c s) = e e^c (at most e^40 here, so finite in float32) and the
    shift e^-c is applied to the per-anchor sums and gradient coefficients: one (A, W) pass
    fewer than exp(c (s - 1)), and the same values. (So the e w saved for backward is unshifted.)

    With a tilt t (HCL's beta / tau), w is the mask times the importance weights
    n e^{t s} / sum e^{t s}: then S = n sum(e T) / sum(T), T = exp(t (s - 1)) on the selected, and
    no weight tensor is formed or differentiated apart.

    Backward is written out: the gradient of the (A, W) similarities is one pass over the saved
    e w (two with a differentiated tilt: dS/ds_j = c (e w)_j + t ((e w)_j - S w_j / n)), where
    autograd through the plain expression spends about four passes forward and six backward on
    mul/div/exp nodes."""

    @staticmethod
    def forward(ctx, sim: Tensor, pos: Tensor, w: Tensor, n: Tensor | None, c: float,
                tp: float, t: float, t_grad: bool) -> Tensor:
        shift = math.exp(-c)
        # (A, W) passes in place where they can be: at A x W = 8192^2 each new (A, W) tensor is
        # 256 MB of fresh pages, slow to touch the first time
        e = torch.mul(sim, c).exp_()  # (A, W) unshifted: e^{c s}
        wt = None
        if t:
            tw = torch.add(sim, -1.0).mul_(t).exp_().mul_(w)  # (A, W) e^{t (s - 1)}, masked
            tot = tw.sum(1).clamp_min(torch.finfo(sim.dtype).tiny)  # (A,) 0 n: 0 weights
            wt = tw.mul_((n / tot).unsqueeze(1))  # (A, W) the tilt weights, mean 1
        weight = w if wt is None else wt  # (A, W)
        keep_e = ctx.needs_input_grad[2]  # the weights' gradient needs e itself
        ew = e * weight if keep_e else e.mul_(weight)  # (A, W)
        big_s = ew.sum(1).mul_(shift)  # (A,) shifted
        e_pos = torch.exp((pos - 1.0) * c)  # (A,)
        if tp == 0.0:
            ng, active = big_s, None
        else:
            raw = (big_s - tp * n * e_pos) / (1.0 - tp)  # (A,)
            low = n * math.exp(-2.0 * c)  # (A,) N e^{-1/tau}, shifted by 1/tau
            active = raw > low  # (A,) where the estimator is not clamped
            ng = torch.where(active, raw, low)  # (A,)
        denom = e_pos + ng  # (A,)
        ctx.c, ctx.tp, ctx.t, ctx.shift = c, tp, (t if t_grad else 0.0), shift
        ctx.save_for_backward(e if keep_e else None, ew, e_pos, denom, n,
                              active, wt if (t and t_grad) else None, big_s)
        return torch.log(denom) - (pos - 1.0) * c  # (A,)

    @staticmethod
    def backward(ctx, g: Tensor):
        e, ew, e_pos, denom, n, active, wt, big_s = ctx.saved_tensors
        c, tp, t, shift = ctx.c, ctx.tp, ctx.t, ctx.shift
        r = g / denom  # (A,) d loss / d N_g and d loss / d e_p (direct)
        if tp == 0.0:
            d_s, d_ep = r, r  # (A,)
        else:
            a = active.to(r.dtype)  # (A,)
            d_s = r * a / (1.0 - tp)  # (A,)
            d_ep = r - r * a * tp * n / (1.0 - tp)  # (A,)
        d_sim = None
        if ctx.needs_input_grad[0]:
            if wt is None:  # ew is unshifted: the shift goes into the (A,) coefficient
                d_sim = ew * (d_s * (c * shift))[:, None]  # (A, W)
            else:  # through the tilt weights too
                coef = (d_s * big_s / n.clamp_min(1.0) * t)[:, None]  # (A, 1)
                d_sim = ew * (d_s * ((c + t) * shift))[:, None]  # (A, W)
                d_sim.addcmul_(wt, coef, value=-1.0)  # (A, W) minus wt coef, no temporary
        d_pos = d_ep * e_pos * c - g * c  # (A,)
        d_w = e * (d_s * shift)[:, None] if ctx.needs_input_grad[2] else None  # (A, W)
        return d_sim, d_pos, d_w, None, None, None, None, None


class _MultiPositiveNCE(torch.autograd.Function):
    """Per-anchor L_out (several positives) from the (A, W) similarities in a few fused passes,
    shifted as :class:`_ShiftedNCE` (cosines are at most 1; needs 2/tau <= 80), with c = 1/tau,
    U the denominator's candidates (selected or extra positives), E the extra positives and
    n = 1 + |E|:

        loss = log(e_p + sum_U exp(c (s - 1))) - c ((s_p + sum_E s) / n - 1)

    Backward is written out: d loss / d s_j = c U_j exp(c (s_j - 1)) / denom - c E_j / n, one
    pass over the saved e U and one over E, where autograd through the plain expression keeps
    about ten (A, W) tensors."""

    @staticmethod
    def forward(ctx, sim: Tensor, pos: Tensor, used: Tensor, ep: Tensor, c: float) -> Tensor:
        shift = math.exp(-c)
        eu = torch.mul(sim, c).exp_().mul_(used)  # (A, W) e^{c s} on U, unshifted
        e_pos = torch.exp((pos - 1.0) * c)  # (A,)
        denom = eu.sum(1).mul_(shift).add_(e_pos)  # (A,) shifted by e^-c
        epf = ep.to(sim.dtype)  # (A, W)
        n_pos = epf.sum(1).add_(1.0)  # (A,)
        mean_pos = (sim * epf).sum(1).add_(pos).div_(n_pos)  # (A,)
        ctx.c, ctx.shift = c, shift
        ctx.save_for_backward(eu, epf, denom, e_pos, n_pos)
        return torch.log(denom) - (mean_pos - 1.0) * c  # (A,)

    @staticmethod
    def backward(ctx, g: Tensor):
        eu, epf, denom, e_pos, n_pos = ctx.saved_tensors
        c = ctx.c
        r = g / denom  # (A,)
        g_pos = g * c / n_pos  # (A,) each positive's share of the numerator
        d_sim = None
        if ctx.needs_input_grad[0]:
            d_sim = eu * (r * (c * ctx.shift))[:, None]  # (A, W)
            d_sim.addcmul_(epf, g_pos[:, None], value=-1.0)  # (A, W)
        d_pos = r * e_pos * c - g_pos  # (A,)
        return d_sim, d_pos, None, None, None


def _supcon(negs: Negatives, tau: float) -> ObjectiveOut:
    """InfoNCE with several positives (Khosla et al. 2020, L_out): the anchor's positive and
    its ``extra_positives`` share the numerator's average, and the denominator sums the
    positive, the extra positives and the selected negatives. Weights, a tilt and tau+ have
    no meaning here and are refused."""
    if negs.tau_plus or negs.tilt or negs.is_weighted(tilt=False):
        raise ObjectiveError("extra positives (SupCon) take no weights, tilt or tau+")
    sim = negs.similarity()  # (A, W)
    pos = (negs.anchors * negs.positives).sum(-1)  # (A,)
    ep = negs.extra_positives  # (A, W)
    used = negs.selected() | ep  # (A, W) the denominator's candidates
    if 2.0 / tau <= 80.0:
        loss = _MultiPositiveNCE.apply(sim, pos, used, ep, 1.0 / tau)  # (A,)
        return ObjectiveOut(loss=loss.mean(), sim=sim.detach())
    # a small tau: shifted by the largest used logit and clamped, as info_nce's explicit path
    pos_l = pos / tau  # (A,)
    logits = sim / tau  # (A, W)
    m = torch.maximum(pos_l, torch.where(used, logits, float("-inf")).amax(1)).detach()  # (A,)
    e = torch.exp((logits - m[:, None]).clamp(-80.0, 80.0)) * used  # (A, W)
    log_denom = torch.log(torch.exp(pos_l - m) + e.sum(1)) + m  # (A,)
    n_pos = 1.0 + ep.sum(1, dtype=sim.dtype)  # (A,)
    mean_pos = (pos_l + (logits * ep).sum(1)) / n_pos  # (A,)
    return ObjectiveOut(loss=(log_denom - mean_pos).mean(), sim=sim.detach())


def _hardness(w: Tensor, sim: Tensor, alpha: float) -> Tensor:
    """(A, W) the weights ``w`` times e^{alpha stopgrad(s)}: alpha * sg(s_n) on each logit."""
    return w * torch.exp(sim.detach() * alpha) if alpha else w


def info_nce(negs: Negatives, temperature: float, hardness_alpha: float = 0.0) -> ObjectiveOut:
    tau, alpha = temperature, hardness_alpha
    if negs.extra_positives is not None:
        if alpha:
            raise ObjectiveError("objective.hardness_alpha does not apply with several "
                                 "positives (SupCon)")
        return _supcon(negs, tau)
    if alpha and negs.tilt:
        raise ObjectiveError("objective.hardness_alpha does not compose with HCL's tilt (both "
                             "reweight the negatives by hardness); set one of them")
    a, p = negs.anchors, negs.positives
    sim = negs.similarity()  # (A, W)
    sel = negs.selected()  # (A, W)
    pos = (a * p).sum(-1)  # (A,)
    t, tp = negs.tilt, negs.tau_plus
    if 2.0 * (1.0 / tau + t) <= 80.0 and not (t and negs.is_weighted(tilt=False)):
        w = negs.selection_weights(sim.dtype, tilt=False)  # (A, W) the tilt applied below
        w = _hardness(w, sim, alpha)  # (A, W)
        # (A,) negatives per anchor; a bool row sum straight into a float is much faster than
        # into int64
        n = sel.sum(1, dtype=sim.dtype) if (tp or t) else None
        loss = _ShiftedNCE.apply(sim, pos, w, n, 1.0 / tau, tp, t, negs.tilt_grad)  # (A,)
        return ObjectiveOut(loss=loss.mean(), sim=sim.detach())
    # A small tau (or a steep tilt): weights formed explicitly, a shift by the largest *used*
    # logit and a clamp to [-80, 80]: a used candidate more than 80 below it counts e^-80
    # (< 2e-35 of the row's largest term) instead of less, an unused one above it stays finite
    # until its weight 0 zeroes it, and used ones lie strictly inside the clamp, so their
    # gradient passes. NOTE: no -inf fill: exp(-inf), and exp of anything that underflows, is
    # several times slower than exp of a normal number on CPUs.
    w = _hardness(negs.selection_weights(sim.dtype), sim, alpha)  # (A, W)
    n = sel.sum(1, dtype=sim.dtype) if tp else None
    pos_l = pos / tau  # (A,)
    neg_l = sim / tau  # (A, W)
    m = torch.maximum(pos_l, torch.where(sel, neg_l, float("-inf")).amax(1)).detach()
    x = (neg_l - m[:, None]).clamp(-80.0, 80.0)  # (A, W)
    e_neg = (torch.exp(x) * w).sum(1)  # (A,)
    e_pos = torch.exp(pos_l - m)  # (A,)
    if tp == 0.0:
        ng = e_neg
    else:
        ng = (e_neg - tp * n * e_pos) / (1.0 - tp)  # (A,)
        ng = torch.maximum(ng, n * torch.exp(-1.0 / tau - m))  # N e^{-1/tau}, shifted
    loss = torch.log(e_pos + ng) - (pos_l - m)  # (A,)
    return ObjectiveOut(loss=loss.mean(), sim=sim.detach())


def triplet(negs: Negatives, margin: float) -> ObjectiveOut:
    a, p = negs.anchors, negs.positives
    sim = negs.similarity()  # (A, P|K)
    pos = (a * p).sum(-1)  # (A,)
    d_an = torch.sqrt((2.0 - 2.0 * sim).clamp_min(1e-12))  # (A, P) ||a - n|| for unit vectors
    d_ap = torch.sqrt((2.0 - 2.0 * pos).clamp_min(1e-12))  # (A,)
    hinge = torch.relu(d_ap[:, None] - d_an + margin)  # (A, P)
    w = negs.selection_weights(sim.dtype)  # (A, P)
    loss = (hinge * w).sum() / w.sum().clamp_min(1e-12)
    return ObjectiveOut(loss=loss, sim=sim.detach())


OBJECTIVES = ("infonce", "triplet")


def make_objective(cfg: ObjectiveConfig):
    """A callable ``negs -> ObjectiveOut`` for the configured objective."""
    if cfg.name == "infonce":
        return lambda negs: info_nce(negs, cfg.temperature, cfg.hardness_alpha)
    return lambda negs: triplet(negs, cfg.margin)


def objective_flops(negs: Negatives) -> int:
    """FLOPs of the objective's similarities, forward and backward (2 backward products)."""
    return 6 * negs.num_anchors * negs.width * negs.anchors.shape[1]
