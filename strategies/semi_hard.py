"""Semi-hard negatives: farther than the positive, but within the margin.

Schroff, Kalenichenko, Philbin. "FaceNet: A Unified Embedding for Face Recognition and
Clustering", CVPR 2015, section 3.2. For an anchor a with positive p, a negative n is semi-hard when

    d(a, p) < d(a, n) <= d(a, p) + m

with d the Euclidean distance of unit vectors, d = sqrt(2 - 2 cos). Anchors are symmetric as in
SimCLR (both views of each instance are anchors,
:func:`negbench.strategies.kernels.in_batch_negatives`); the candidates come from the batch
(default), from a FIFO bank of past keys, or from both.

Selection rules, all vectorised as one (A, P) band mask:

- The band test is written as pytorch-metric-learning's ``TripletMarginMiner`` writes it,
  ``g = d(a, n) - d(a, p); 0 < g <= m``, so that with ``K = 0``, ``fallback = "none"`` and the
  batch pool it selects exactly the (anchor, negative) pairs of
  ``TripletMarginMiner(margin=m, type_of_triplets="semihard")`` on ``cat(q, k)`` with labels
  ``cat(ids, ids)`` (each anchor has one positive there: its other view).
- ``K > 0`` caps the negatives per anchor: when more than K lie in the band, the K hardest (the
  smallest d(a, n), i.e. those nearest the positive's distance) are kept.
- ``fallback`` says what an anchor whose band is empty gets:
    * ``"none"``: nothing (FaceNet; the anchor contributes no negative term this step);
    * ``"nearest"`` (default): the single negative nearest the band, i.e. the one minimising
      ``d(a, p) - d(a, n)`` below the band or ``d(a, n) - d(a, p) - m`` above it;
    * ``"hardest"``: the single closest negative, min d(a, n) (batch-hard, Hermans et al. 2017).

NOTE: FaceNet mines on squared distances and selects one semi-hard negative per (a, p) pair
among a large mini-batch; here the band is on plain distances (as pytorch-metric-learning does),
every band negative is used unless ``K`` caps them, and the fallback is our addition (FaceNet
leaves an empty band empty: ``fallback="none"``).
NOTE: the bank (``pool="bank"`` or ``"both"``) holds past keys of the same encoder (no momentum
copy); its slots are masked while empty and an anchor's own instance in it is masked (the meter
counts it as an instance collision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Choice,
    Float,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from negbench.strategies.kernels import fifo_enqueue, in_batch_negatives

POOLS = ("batch", "bank", "both")
FALLBACKS = ("none", "nearest", "hardest")


@dataclass(frozen=True)
class SemiHardConfig:
    m: float = 0.2  # margin of the band, on distances of unit vectors (in (0, 2])
    K: int = 0  # at most K negatives per anchor, the hardest in the band; 0: no cap
    fallback: str = "nearest"  # what an anchor with an empty band gets: none | nearest | hardest
    pool: str = "batch"  # batch | bank (FIFO of past keys) | both (batch views, then the bank)
    bank_size: int = 1024  # keys kept in the bank (pool = bank | both)

    space: ClassVar[dict] = {
        "m": Float(0.05, 1.0, log=True),
        "K": Int(0, 256),
        "fallback": Choice(FALLBACKS),
    }

    def __post_init__(self):
        if not 0.0 < self.m <= 2.0:
            raise StrategyError(f"semi-hard: m (margin) must lie in (0, 2], got {self.m}")
        if self.K < 0:
            raise StrategyError(f"semi-hard: K must be >= 0 (0: no cap), got {self.K}")
        if self.fallback not in FALLBACKS:
            raise StrategyError(f"semi-hard: fallback must be one of {', '.join(FALLBACKS)}; "
                                f"got {self.fallback!r}")
        if self.pool not in POOLS:
            raise StrategyError(f"semi-hard: pool must be one of {', '.join(POOLS)}; "
                                f"got {self.pool!r}")
        if self.bank_size < 1:
            raise StrategyError(f"semi-hard: bank_size must be >= 1, got {self.bank_size}")


def semi_hard_mask(anchors: Tensor, positives: Tensor, pool: Tensor, valid: Tensor, m: float,
                   K: int = 0, fallback: str = "none", sim: Tensor | None = None) -> Tensor:
    """(A, P) bool: the semi-hard negatives of each anchor among the ``valid`` pool entries.

    ``anchors``/``positives`` (A, D) and ``pool`` (P, D) are unit vectors; ``valid`` (A, P) marks
    the candidates that may be negatives at all; ``sim`` (A, P), when given, is ``anchors @
    pool.T`` already computed. See the module docstring for K and fallback.

    The band is tested on cosines, which is the distance test rewritten without an (A, P) square
    root: with d = sqrt(max(2 - 2s, 0)) monotone in s, d(a, n) > d(a, p) <=> s_n < min(s_p, 1),
    and d(a, n) <= d(a, p) + m <=> s_n >= 1 - (d(a, p) + m)^2 / 2. The fallback is found the
    same way: the nearest candidate below the band is the least similar of those at least as
    similar as the positive, the nearest above it the most similar of those beyond the margin,
    and only those two per anchor are compared by their distance to the band."""
    s = (anchors @ pool.T if sim is None else sim).detach()  # (A, P) cosine
    d_ap = torch.sqrt((2.0 - 2.0 * (anchors * positives).sum(-1)).clamp_min(0.0))  # (A,)
    hi = (1.0 - 0.5 * d_ap * d_ap).clamp_max(1.0)[:, None]  # (A, 1) s_p, as d(a, p) rounds it
    lo = (1.0 - 0.5 * (d_ap + m) ** 2)[:, None]  # (A, 1) the margin's edge
    # the three regions of the valid candidates, from two comparisons (lo < hi, so "closer"
    # lies inside the margin) and three bool passes: below the band, in it, above it
    vi = (s >= lo).logical_and_(valid)  # (A, P) valid, within the margin: g <= m
    below = (s >= hi).logical_and_(vi)  # (A, P) valid, no farther than the positive: g <= 0
    band = vi ^ below  # (A, P) valid, 0 < g <= m
    p = pool.shape[0]
    # NOTE: masked extrema are taken on s shifted by +-4 where the mask holds (cosines lie in
    # [-1, 1], so a shifted entry always wins), not on torch.where(mask, s, inf): on CPUs a
    # select with an unpredictable mask costs several times the float arithmetic. The values are
    # then gathered from s itself, unshifted.
    if 0 < K < p:
        top = _shifted(s, band, 4.0).topk(K, dim=1).indices  # (A, K) the K most similar in band
        band = torch.zeros_like(band).scatter_(1, top, band.gather(1, top))  # (A, P)
    if fallback == "none" or p == 0:
        return band
    if fallback == "nearest":
        above = valid ^ vi  # (A, P) valid, beyond the margin
        # one shifted copy serves both searches: below -4 (in [-5, -3]), above +4 (in [3, 5]),
        # the rest unshifted, so the row minimum is the least similar below when there is one
        # and the row maximum the most similar above; the shift is made in int8, one pass
        u = torch.add(s, above.view(torch.int8) - below.view(torch.int8), alpha=4.0)  # (A, P)
        v1, j1 = u.min(1, keepdim=True)  # (A, 1) least similar below
        v2, j2 = u.max(1, keepdim=True)  # (A, 1) most similar above
        s1, s2 = s.gather(1, j1), s.gather(1, j2)  # (A, 1) their cosines
        inf = float("inf")
        g1 = d_ap[:, None] - torch.sqrt((2.0 - 2.0 * s1).clamp_min(0.0))  # (A, 1) gap below
        g2 = torch.sqrt((2.0 - 2.0 * s2).clamp_min(0.0)) - d_ap[:, None] - m  # (A, 1) above
        g1 = torch.where(v1 < -2.0, g1, inf)  # (A, 1) inf where nothing lies below
        g2 = torch.where(v2 > 2.0, g2, inf)  # (A, 1) inf where nothing lies above
        j = torch.where(g1 <= g2, j1, j2)  # (A, 1)
    else:  # hardest: the most similar valid candidate
        j = _shifted(s, valid, 4.0).argmax(dim=1, keepdim=True)  # (A, 1)
    # a bool row "any" through uint8 max: much faster than Tensor.any(1) on CPUs
    empty = band.view(torch.uint8).amax(1, keepdim=True) == 0  # (A, 1)
    # the fallback joins the band in place (an OR at one column per row)
    return band.scatter_(1, j, band.gather(1, j) | (valid.gather(1, j) & empty))  # (A, P)


def _shifted(s: Tensor, mask: Tensor, shift: float) -> Tensor:
    """(A, P) s + shift where ``mask`` holds, s elsewhere (float arithmetic, no select)."""
    return torch.add(s, mask.to(s.dtype), alpha=shift)


@register("semi-hard")
class SemiHard(Strategy):
    """FaceNet's semi-hard band d(a,p) < d(a,n) <= d(a,p) + m over the batch or a key bank."""

    Config = SemiHardConfig
    cfg: SemiHardConfig
    paper = "Schroff et al. 2015, FaceNet (semi-hard negatives)"

    def __init__(self, cfg: SemiHardConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        n = cfg.bank_size if cfg.pool != "batch" else 0
        self.register_buffer("bank", torch.zeros(n, dim))  # (Q, D) past keys
        self.register_buffer("bank_ids", torch.full((n,), -1, dtype=torch.long))  # (Q,) -1: empty
        self.register_buffer("_ptr", torch.zeros((), dtype=torch.long))  # next slot to write

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        negs = in_batch_negatives(q, k, ctx.ids)
        if cfg.pool != "batch":
            bank = self.bank.to(q.dtype)  # (Q, D)
            bank_valid = (self.bank_ids[None, :] >= 0) & (
                self.bank_ids[None, :] != negs.anchor_ids[:, None])  # (A, Q)
            if cfg.pool == "bank":
                # copies: update() rewrites the bank in place before the meter reads the ids
                negs.pool, negs.pool_ids = bank.clone(), self.bank_ids.clone()  # (Q, D), (Q,)
                negs.mask, negs.batch_views = bank_valid, 0
            else:
                negs.pool = torch.cat([negs.pool, bank])  # (2B + Q, D)
                negs.pool_ids = torch.cat([negs.pool_ids, self.bank_ids])  # (2B + Q,)
                negs.mask = torch.cat([negs.mask, bank_valid], dim=1)  # (A, 2B + Q)
        # one product serves the band and, with its gradients, the objective (negs.sim); the
        # objective's FLOPs count it, so it is not charged as mining
        negs.sim = negs.anchors @ negs.pool.T  # (A, P)
        with torch.no_grad():
            negs.mask = semi_hard_mask(negs.anchors, negs.positives, negs.pool, negs.mask,
                                       cfg.m, cfg.K, cfg.fallback, sim=negs.sim)  # (A, P)
        return negs

    @torch.no_grad()
    def update(self, q: Tensor, k: Tensor, ctx: StepContext) -> None:
        if self.cfg.pool == "batch":
            return
        fifo_enqueue(self.bank, self.bank_ids, self._ptr, k, ctx.ids)
