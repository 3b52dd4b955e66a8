"""Kernels shared by several strategies: the one module a strategy imports besides the contract.

Strategies never import each other (DESIGN.md); whatever two of them compute alike lives here:
SimCLR's in-batch selection, HCL's importance weights, the float-ordered integer keys of a
similarity matrix, the FIFO ring buffer of a queue of keys, and the oracle references' in-batch
selection with its same-class mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negbench.strategies.base import Negatives, StepContext, StrategyError, tilt_weights


# --------------------------------------------------------------------------- in-batch selection
def in_batch_negatives(q: Tensor, k: Tensor, ids: Tensor) -> Negatives:
    """SimCLR's symmetric selection; other strategies that start from the batch reuse it."""
    z = torch.cat([q, k])  # (2B, D)
    zid = torch.cat([ids, ids])  # (2B,)
    # (2B, 2B): drops the anchor and its positive; the (B, B) block tiled, as zid is ids twice
    # (cheaper on CPUs than comparing the (2B, 2B) pairs)
    mask = (ids[:, None] != ids[None, :]).repeat(2, 2)
    return Negatives(
        anchors=z,
        positives=torch.cat([k, q]),
        anchor_ids=zid,
        pool=z,
        pool_ids=zid,
        mask=mask,
        batch_views=z.shape[0],
    )


def in_batch_scored(q: Tensor, k: Tensor, ids: Tensor) -> tuple[Negatives, Tensor, Tensor]:
    """In-batch negatives for a rule on scores: their (A, P) similarities computed once into
    ``negs.sim`` (with gradients: the objective reuses them), and, detached for the rule, those
    similarities and each anchor's positive score (A,)."""
    negs = in_batch_negatives(q, k, ids)
    negs.sim = negs.anchors @ negs.pool.T  # (A, P)
    s_pos = (negs.anchors * negs.positives).sum(-1).detach()  # (A,)
    return negs, negs.sim.detach(), s_pos


# --------------------------------------------------------------------------- weights
def importance_weights(sim: Tensor, sel: Tensor, beta: float, tau: float) -> Tensor:
    """(A, P) w = e^{beta s / tau}, normalised to mean 1 over each row's selected entries, 0
    elsewhere (:func:`negbench.strategies.base.tilt_weights` with t = beta / tau)."""
    return tilt_weights(sim, sel, beta / tau)


# --------------------------------------------------------------------------- ranking keys
_SAME_SIZE_INT = {torch.float64: torch.int64, torch.float32: torch.int32,
                  torch.float16: torch.int16, torch.bfloat16: torch.int16}


def ordered_bits(x: Tensor) -> Tensor:
    """The bits of the floats ``x`` as signed integers of the same size, in the floats' order:
    IEEE 754 orders non-negative floats like their bits; a negative float's other bits are
    flipped, which reverses their order below zero. The map is its own inverse (it keeps the sign
    bit), so ``ordered_bits(i).view(float)`` recovers the floats. -0.0 sorts just below +0.0
    (they compare equal as floats). ``x`` may also be such integers (the inverse). Its only use:
    torch's CPU sort and top-k are faster on int32 than on float32 rows."""
    i = x.view(_SAME_SIZE_INT[x.dtype]) if x.is_floating_point() else x
    flip = i >> (8 * i.element_size() - 1)  # -1 where the sign bit is set, else 0
    flip &= torch.iinfo(i.dtype).max  # there, every bit but the sign
    return flip.bitwise_xor_(i)  # one new tensor, not three


# --------------------------------------------------------------------------- queues
@torch.no_grad()
def fifo_enqueue(queue: Tensor, queue_ids: Tensor, ptr: Tensor, keys: Tensor,
                 ids: Tensor) -> None:
    """Enqueue ``keys`` (B, D) with dataset ``ids`` (B,) into a ring buffer in place (MoCo's
    ``_dequeue_and_enqueue``): key j goes to slot (ptr + j) mod K and ``ptr`` advances by B, all
    on the device. A batch longer than the queue writes only its last K keys, which is what a
    FIFO of length K keeps."""
    k_len, b = queue.shape[0], keys.shape[0]
    n = min(b, k_len)
    slots = (ptr + (b - n) + torch.arange(n, device=keys.device)) % k_len  # (n,)
    queue.index_copy_(0, slots, keys[b - n:].to(queue.dtype))  # (K, D)
    queue_ids.index_copy_(0, slots, ids[b - n:])  # (K,)
    ptr.add_(b).remainder_(k_len)


# --------------------------------------------------------------------------- oracle references
def in_batch_same_class(q: Tensor, k: Tensor, ctx: StepContext,
                        who: str) -> tuple[Negatives, Tensor]:
    """In-batch negatives and the (2B, 2B) bool "same class" among their pool, from the oracle
    labels that only an oracle reference's context holds (``who`` names it in the error)."""
    if ctx.labels is None:
        raise StrategyError(f"{who}: an oracle reference needs ctx.labels")
    negs = in_batch_negatives(q, k, ctx.ids)
    y = ctx.labels[negs.pool_ids]  # (2B,) anchors and pool are the same views
    return negs, y[:, None] == y[None, :]  # (2B, 2B)


# --------------------------------------------------------------------------- false-negative rules
def rank_desc(s: Tensor, valid: Tensor) -> Tensor:
    """(A, P) int64: each candidate's rank by similarity within its row, 0 the most similar;
    the ``valid`` candidates rank before every invalid one (cosines lie in [-1, 1], so an
    invalid entry shifted by -4 sorts after all of them)."""
    key = torch.add(s, (~valid).to(s.dtype), alpha=-4.0)  # (A, P)
    order = key.argsort(dim=1, descending=True)  # (A, P) columns, most similar first
    ranks = torch.arange(s.shape[1], device=s.device).expand_as(order)  # (A, P)
    return torch.empty_like(order).scatter_(1, order, ranks)


def below_positive(s: Tensor, s_pos: Tensor, absolute: float, relative: float) -> Tensor:
    """(A, P) bool: the candidates scored below the anchor's positive ``s_pos`` (A,) by the
    margins: s_n < s_p - absolute (when absolute >= 0) and s_n < (1 - relative) s_p (when
    relative >= 0); a negative margin turns that test off."""
    keep = torch.ones_like(s, dtype=torch.bool)
    if absolute >= 0:
        keep &= s < (s_pos - absolute)[:, None]
    if relative >= 0:
        keep &= s < (s_pos * (1.0 - relative))[:, None]
    return keep


def not_above_positive(s: Tensor, s_pos: Tensor, margin: float) -> Tensor:
    """(A, P) bool: the candidates not scored above the anchor's positive ``s_pos`` (A,) by
    more than ``margin``, s_n <= s_p + margin (GISTEmbed's guide rule, self-guided)."""
    return s <= (s_pos + margin)[:, None]


def pick_k(s: Tensor, keep: Tensor, k: int, how: str, generator: torch.Generator) -> Tensor:
    """(A, P) bool: at most ``k`` of each row's ``keep`` candidates, the most similar
    (``how="top"``) or uniformly at random (``"random"``); all of them when ``k`` is 0 or at
    least P."""
    p = s.shape[1]
    if k <= 0 or k >= p:
        return keep
    if how == "top":
        key = torch.add(s, keep.to(s.dtype), alpha=4.0)  # kept ones above all others
    else:
        u = torch.rand(s.shape, generator=generator, device=s.device, dtype=s.dtype)
        key = u.add_(keep.to(s.dtype), alpha=4.0)  # (A, P) random order, kept first
    top = key.topk(k, dim=1).indices  # (A, k)
    return torch.zeros_like(keep).scatter_(1, top, keep.gather(1, top))
