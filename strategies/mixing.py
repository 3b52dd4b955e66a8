"""Synthetic hard negatives by mixing the hardest ones (MoCHi).

Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus. "Hard Negative Mixing for Contrastive
Learning", NeurIPS 2020. For each query q, rank its negatives by similarity and keep the N
hardest, Q^N = {n_1 .. n_N}. Then synthesize, per query,

- s mixes of two hard negatives:    h  = normalize(alpha n_i + (1 - alpha) n_j),  alpha ~ U(0, 1)
- s' mixes with the query itself:   h' = normalize(beta q + (1 - beta) n_j),      beta ~ U(0, 0.5)

(n_i, n_j drawn uniformly from Q^N) and contrast q against its real negatives plus these s + s'
synthetic ones. Nothing is backpropagated through the synthesis: in the paper the parents are
queue keys, which carry no gradient, and the query's share in h' is not differentiated either.
Here the synthetic points enter the loss as constants (detached): the gradient reaches q through
its similarity to them, and the real (in-batch) negatives keep their own gradient.

NOTE: the base pool is SimCLR's symmetric in-batch pool (every view is an anchor, 2B-2 real
negatives each), not the paper's MoCo queue of momentum keys; each of the 2B anchors gets its own
s + s' synthetic negatives, made from its own hardest in-batch negatives.

NOTE: ``warmup`` (negbench's, 0 by default: the rule above from the first step) trains on the
in-batch negatives alone until that fraction of the budget is spent. A transformer trained from
scratch (bbc-news) starts with every embedding alike (in-batch hardness 0.8-0.9 in the first
steps); mixes of its hardest negatives are then near-copies of the anchor, and the run collapsed
onto one point (uniformity -0.003 at 20,000 samples) whatever the mix type (s' = 0 or s = 0
alike). With a quarter of the budget on in-batch first it trained (uniformity -1.8, kNN 0.665
against in-batch's 0.699); see docs/decisions.md.

NOTE: alpha and beta are drawn on [0, 1) and [0, 0.5) (``torch.rand``), the paper's open
intervals up to a set of measure zero; the two parents of a pair mix are distinct hard negatives
when N >= 2 (a "pair" of negatives; the paper only says they are randomly chosen).

Layout (the mask form of ``Negatives`` plus per-anchor *virtual* extras): the shared selection
is in-batch's, ``pool`` = z (P, D) the 2B views with ``mask`` (A, P) and ``batch_views`` = P; each
anchor's s + s' synthetic negatives (pair mixes first) are S = s + s' extra columns with
``extra`` = None, ``extra_ids`` = -1 and ``extra_mask`` marking the valid ones. The anchors'
similarities to the real and the synthetic candidates come as ``sim`` (A, P + S), with their
gradients.

NOTE: the N hardest are ranked over every view but the anchor itself and its positive (the
other view of its instance), which are exactly its non-negatives when the batch's ids are
distinct (the runner's batches always are). Should a batch repeat an id, the further views of
the anchor's instance can take places among the N; the mixes with such a parent are masked
(``extra_mask``), so that anchor has fewer valid mixes, never a view of itself as a parent.

The Gram trick: the anchors ARE the pool rows (anchor a is pool row a), so everything a mix needs
is an entry of the one (A, P) product S = z z^T. For a mix h = normalize(w x_f + (1 - w) x_g) of
pool rows f and g (f = a for a query mix),

    a . h = (w S[a,f] + (1 - w) S[a,g]) / n,
    n^2   = w^2 S[f,f] + (1 - w)^2 S[g,g] + 2 w (1 - w) S[f,g]

(``F.normalize``'s n >= 1e-12 kept), so the synthetic vectors (A, S, D) are never formed. The
gradient is the one of "anchors against detached mixes": d(a . h)/da = h = (w/n) x_f +
((1 - w)/n) x_g, nothing through the parents; :class:`_MixedSimilarity` folds it into the (A, P)
product's own backward (the mix columns' gradients, times w/n and (1 - w)/n, added into columns
f and g of the (A, P) gradient G before it multiplies the pool). As S = z z^T, the backward is
one (P, P) x (P, D) product, (G + G^T) z, where a plain InfoNCE's takes two.

NOTE: cost. One (A, P) x D product per step, shared by the ranking and the objective (``sim``;
the objective's FLOPs count it, so nothing is charged as mining); the paper ranks the logits its
loss computes too. The mixes cost O(A (s+s')) entries of S, where the paper's synthesis is
O(A (s+s') D); ``charge_adversary`` counts those A (s+s') mix similarities. The backward is one
(A, P) x (P, D) product (see :class:`_MixedSimilarity`) plus a scatter of A (s+s') entries; the
objective's FLOPs are counted as for every strategy (6 A W D: the nominal forward and two
backward products), so the cost tables compare strategies, not implementations. What is left
above a plain InfoNCE is mostly the ranking, a top-N over the (A, P) matrix (see
:func:`hardest`).

False-negative accounting (``extra_sources``/``extra_source_weights``, (A, s + s', 2)): a pair
mix stands for the ids of n_i and n_j with weights alpha and 1 - alpha; a query mix for the
anchor's own id with weight beta and n_j's with 1 - beta. The query share beta is thus counted as a
false-negative share by construction (the anchor's label equals itself): h' is partly the anchor.
Real candidates stand for their own id with weight 1 (``sources`` left unset). Synthetic
candidates have ``extra_ids`` = -1, so they are never an "own instance" contract violation nor an
instance collision.

Randomness, all from ``ctx.generator`` in this order (the tests replay it): pair parents
i ~ randint(N, (A, s)) and o ~ randint(max(N-1, 1), (A, s)) giving j = o + (o >= i) (uniform
over the other N - 1), alpha ~ rand(A, s), query-mix parents j' ~ randint(N, (A, s')),
beta ~ 0.5 rand(A, s'). The parents are positions in :func:`hardest`'s list of the N hardest,
which is in no particular order: the draws are uniform over the positions, so any fixed order
gives the same distribution of mixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Float,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from negbench.strategies.kernels import in_batch_negatives, ordered_bits


@dataclass(frozen=True)
class MixingConfig:
    N: int = 64  # hardest negatives per query to mix from (capped at the 2B-2 in the batch)
    s: int = 64  # synthetic mixes of two hard negatives, per query
    s_prime: int = 32  # synthetic mixes of the query with a hard negative, per query
    warmup: float = 0.0  # fraction of the budget trained on in-batch negatives alone, no mixes

    space: ClassVar[dict] = {
        "N": Int(8, 512, log=True),
        "s": Int(8, 512, log=True),
        "s_prime": Int(0, 256),
        "warmup": Float(0.0, 0.5),
    }

    def __post_init__(self):
        if self.N < 1:
            raise StrategyError(f"mixing: N (hardest negatives to mix) must be >= 1, got {self.N}")
        if self.s < 0:
            raise StrategyError(f"mixing: s (pair mixes per query) must be >= 0, got {self.s}")
        if self.s_prime < 0:
            raise StrategyError(f"mixing: s_prime (query mixes per query) must be >= 0, "
                                f"got {self.s_prime}")
        if not 0.0 <= self.warmup < 1.0:
            raise StrategyError(f"mixing: warmup (a fraction of the budget) must lie in [0, 1), "
                                f"got {self.warmup}")


class _MixedSimilarity(torch.autograd.Function):
    """Fills the mix columns of ``out`` = [S | mixes] (P, P + S') in place and returns it, with
    the gradients of "z against itself and against constant mixes".

    The anchors are the pool rows z (the in-batch layout: anchor r is pool row r), so S[f, g] is
    the dot product of pool rows f and g. The caller has written S = z @ z.T (detached) into the
    first P columns of ``out``; ``first``/``second`` (P, S') are the parents' pool rows and ``w``
    (P, S') the first parent's weight. The S columns get the product's gradient; a mix column the
    gradient of "anchor . constant mix", to the anchor only (see the module docstring).
    """

    @staticmethod
    def forward(ctx, z: Tensor, out: Tensor, first: Tensor, second: Tensor, w: Tensor) -> Tensor:
        p, width = z.shape[0], out.shape[1]
        sim = out[:, :p]  # (P, P) S

        def entries(rows: Tensor, cols: Tensor) -> Tensor:  # S[rows, cols], (P, S') each
            return out.view(-1).index_select(0, (rows * width).add_(cols).view(-1)).view_as(rows)

        diag = sim.diagonal()  # (P,) S[f, f]: squared norms of the pool rows
        d_f = diag.index_select(0, first.view(-1)).view_as(first)  # (P, S')
        d_g = diag.index_select(0, second.view(-1)).view_as(second)  # (P, S')
        v = 1.0 - w  # (P, S')
        norm2 = (w * w).mul_(d_f).addcmul_(v * v, d_g)  # (P, S')
        norm2.addcmul_(w * v, entries(first, second), value=2.0)  # (P, S') n^2
        inv = norm2.clamp_min_(1e-24).rsqrt_()  # (P, S') 1 / max(n, 1e-12), as F.normalize
        c_f, c_g = w * inv, v.mul_(inv)  # (P, S') h = c_f x_f + c_g x_g
        mix = out[:, p:]  # (P, S') a . h, written in place
        torch.mul(c_f, sim.gather(1, first), out=mix).addcmul_(c_g, sim.gather(1, second))
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, first, second, c_f, c_g)
        return out  # (P, P + S')

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, first, second, c_f, c_g = ctx.saved_tensors
        p = z.shape[0]
        g_main = grad[:, :p]  # (P, P) G, the gradient of S = z z^T
        g_mix = grad[:, p:]  # (P, S')
        # dL/dz = G z + G^T z = (G + G^T) z: one (P, P) x (P, D) product where autograd's
        # MmBackward makes two (the sum costs less than a product)
        g = g_main + g_main.T  # (P, P)
        if g_mix.shape[1]:
            g.scatter_add_(1, first, g_mix * c_f)  # (P, P) + the mixes' share of x_f
            g.scatter_add_(1, second, g_mix * c_g)  # (P, P) ... and of x_g
        return g @ z, None, None, None, None  # (P, D)


def gram_buffer(z: Tensor, extra: int) -> Tensor:
    """(P, P + extra): z @ z.T, detached, in the first P columns; the rest left for the mixes."""
    p = z.shape[0]
    out = torch.empty((p, p + extra), dtype=z.dtype, device=z.device)  # (P, P + S')
    with torch.no_grad():
        torch.mm(z, z.T, out=out[:, :p])  # (P, P)
    return out


KEYS_UP_TO = 1 << 22  # rank on ordered_bits() up to this many entries, on the floats beyond


def _top_cols(x: Tensor, n: int) -> Tensor:
    """(A, n) the columns of each row's n largest entries of ``x``, in no particular order.
    Ranked on the floats' :func:`~negbench.strategies.kernels.ordered_bits`: torch.topk runs
    faster on them on CPUs (its float comparisons also test for NaN), the transform included."""
    if x.numel() <= KEYS_UP_TO:  # beyond, a new (A, P) integer tensor costs more than it saves
        x = ordered_bits(x)
    return x.topk(n, dim=1, sorted=False).indices


def hardest(sim: Tensor, n: int) -> Tensor:
    """(A, N) the columns of each row's N largest entries: the set of ``sim.topk(n).indices``
    (up to exact ties), in no particular order (the same order for the same comparisons between
    entries: the selection only compares them).

    torch's CPU top-k partially orders each whole row (a heap when N <= P / 64). For
    16 N <= P <= 64 N the row is first cut into P/4 groups of 4 columns (group j = {j, j + P/4,
    j + P/2, j + 3P/4}): a group holding one of the N largest entries has its maximum among them
    too, so the N groups with the largest maxima hold all N, and the top-N of their 4N columns is
    the row's (exactly, without ties). The top-k then runs over P/4 + 4N entries per row instead
    of P (not used below 16 N: at P = 8 N it is no faster)."""
    a, p = sim.shape
    if p % 4 or not 16 * n <= p <= 64 * n:
        return _top_cols(sim, n)  # (A, N)
    g = p // 4
    best = _top_cols(sim.unflatten(1, (4, g)).amax(1), n)  # (A, N) groups
    cols = best[:, :, None] + g * torch.arange(4, device=sim.device)  # (A, N, 4) members
    cols = cols.view(a, 4 * n)  # (A, 4 N)
    return cols.gather(1, _top_cols(sim.gather(1, cols), n))  # (A, N)


def mixed_similarity(z: Tensor, out: Tensor, first: Tensor, second: Tensor, w: Tensor) -> Tensor:
    """(P, P + S') the anchors z against the pool z and against the mixes
    normalize(w z[first] + (1 - w) z[second]) held constant; ``out`` from :func:`gram_buffer`
    (filled in place and returned)."""
    return _MixedSimilarity.apply(z, out, first, second, w)


@register("mixing")
class Mixing(Strategy):
    """In-batch negatives plus, per anchor, s + s' synthetic mixes of its N hardest (MoCHi)."""

    Config = MixingConfig
    cfg: MixingConfig
    paper = "Kalantidis et al. 2020, Hard Negative Mixing for Contrastive Learning (MoCHi)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        base = in_batch_negatives(q, k, ctx.ids)
        if ctx.fraction < self.cfg.warmup:  # NOTE: no synthesis yet (see the module docstring)
            return base
        z, zid, anchors = base.pool, base.pool_ids, base.anchors  # (P, D), (P,), (A, D)
        a, p = base.num_anchors, base.pool_size
        kb = p - 2  # real negatives per anchor: the other 2B-2 views
        if kb < 1:
            raise StrategyError("mixing: needs at least 2 instances in a batch (no negatives "
                                f"to mix with a batch of {p // 2})")
        n = min(self.cfg.N, kb)
        s, s2 = self.cfg.s, self.cfg.s_prime
        S = s + s2
        dev, dt, g = z.device, z.dtype, ctx.generator

        with torch.no_grad():
            out = gram_buffer(z.detach(), S)  # (A, P + S) the objective's product, once
            sim = out[:, :p]  # (A, P)
            # rank the N hardest on S itself: the anchor's own view and its positive are set to
            # -inf in place for the top-N and restored after it (no (A, P) masked copy)
            rows = torch.arange(a, device=dev)  # (A,)
            own = torch.stack([rows, (rows + p // 2) % p], dim=1)  # (A, 2) own view, positive
            kept = sim.gather(1, own)  # (A, 2)
            sim.scatter_(1, own, float("-inf"))
            hard = hardest(sim, n)  # (A, N) pool rows of the N hardest
            sim.scatter_(1, own, kept)

            i = torch.randint(n, (a, s), generator=g, device=dev)  # (A, s)
            off = torch.randint(max(n - 1, 1), (a, s), generator=g, device=dev)  # (A, s)
            j = off.add_(off >= i) if n >= 2 else i  # (A, s) another hard negative: skip i
            alpha = torch.rand((a, s), generator=g, device=dev, dtype=dt)  # (A, s)
            jq = torch.randint(n, (a, s2), generator=g, device=dev)  # (A, s')
            beta = torch.rand((a, s2), generator=g, device=dev, dtype=dt).mul_(0.5)  # (A, s')

            # both parents of every mix as pool rows: (n_i, n_j) for a pair mix, (q, n_j') for a
            # query mix (the anchors are the pool's views: anchor a is pool row a)
            first = torch.cat([hard.gather(1, i), rows[:, None].expand(a, s2)], dim=1)  # (A, S)
            at2 = torch.cat([j, jq], dim=1)  # (A, S) the second parent's place among the N
            second = hard.gather(1, at2)  # (A, S)
            w = torch.cat([alpha, beta], dim=1)  # (A, S) the first parent's weight
            ctx.charge_adversary(a * S)

            # both parents are real negatives (always, unless a batch repeats an id)
            syn_ok = base.mask.gather(1, second)  # (A, S)
            syn_ok[:, :s] &= base.mask.gather(1, first[:, :s])
            parents = torch.stack([first, second], dim=-1)  # (A, S, 2)
            src = zid.index_select(0, parents.view(-1)).view_as(parents)  # (A, S, 2) their ids
            src_w = torch.stack([w, 1 - w], dim=-1)  # (A, S, 2) their mixing weights

        return Negatives(
            anchors=anchors,
            positives=base.positives,
            anchor_ids=base.anchor_ids,
            pool=z,  # (P, D) the 2B views
            pool_ids=zid,  # (P,)
            mask=base.mask,  # (A, P)
            extra_ids=torch.full((a, S), -1, dtype=torch.long, device=dev),  # (A, S) virtual
            extra_mask=syn_ok,  # (A, S)
            extra_sources=src,  # (A, S, 2)
            extra_source_weights=src_w,  # (A, S, 2)
            batch_views=p,
            sim=mixed_similarity(z, out, first, second, w),  # (A, P + S)
        )
