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

NOTE: alpha and beta are drawn on [0, 1) and [0, 0.5) (``torch.rand``), the paper's open
intervals up to a set of measure zero; the two parents of a pair mix are distinct hard negatives
when N >= 2 (a "pair" of negatives; the paper only says they are randomly chosen).

Layout (the mask form of ``Negatives`` plus per-anchor extras): the shared selection is
in-batch's, ``pool`` = z (P, D) the 2B views with ``mask`` (A, P) and ``batch_views`` = P; each
anchor's s + s' synthetic negatives (pair mixes first) are ``extra`` (A, s + s', D), detached,
with ``extra_ids`` = -1 and ``extra_mask`` marking the valid ones: all, unless a batch repeats a
dataset id (the runner never does) and leaves an anchor fewer than N real negatives, when the
mixes of a missing parent are masked.

NOTE: cost. The synthesis is O(A (s+s') D), as in the paper, and the objective's similarities are
O(A x (P + s + s')): the (A, P) in-batch product plus one batched product of each anchor with its
own (s + s', D) synthetic negatives; nothing of size (A, P, D) is formed. Ranking the N hardest
takes a second, no-grad (A, P) product in ``mine`` (the paper sorts the logits its loss already
computed; here the objective is computed apart from the selection), charged as mining.

False-negative accounting (``extra_sources``/``extra_source_weights``, (A, s + s', 2)): a pair
mix stands for the ids of n_i and n_j with weights alpha and 1 - alpha; a query mix for the
anchor's own id with weight beta and n_j's with 1 - beta. The query share beta is thus counted as a
false-negative share by construction (the anchor's label equals itself): h' is partly the anchor.
Real candidates stand for their own id with weight 1 (``sources`` left unset). Synthetic
candidates have ``extra_ids`` = -1, so they are never an "own instance" contract violation nor an
instance collision.

Randomness, all from ``ctx.generator`` in this order (the tests replay it): pair parents
i ~ randint(N, (A, s)), an offset o ~ randint(max(N-1, 1), (A, s)) giving j = (i + 1 + o) mod N,
alpha ~ rand(A, s), query-mix parents j' ~ randint(N, (A, s')), beta ~ 0.5 rand(A, s').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from strategies import Int, Negatives, StepContext, Strategy, StrategyError, register
from strategies.in_batch import in_batch_negatives


@dataclass(frozen=True)
class MixingConfig:
    N: int = 64  # hardest negatives per query to mix from (capped at the 2B-2 in the batch)
    s: int = 64  # synthetic mixes of two hard negatives, per query
    s_prime: int = 32  # synthetic mixes of the query with a hard negative, per query

    space: ClassVar[dict] = {
        "N": Int(8, 512, log=True),
        "s": Int(8, 512, log=True),
        "s_prime": Int(0, 256),
    }

    def __post_init__(self):
        if self.N < 1:
            raise StrategyError(f"mixing: N (hardest negatives to mix) must be >= 1, got {self.N}")
        if self.s < 0:
            raise StrategyError(f"mixing: s (pair mixes per query) must be >= 0, got {self.s}")
        if self.s_prime < 0:
            raise StrategyError(f"mixing: s_prime (query mixes per query) must be >= 0, "
                                f"got {self.s_prime}")


@register("mixing")
class Mixing(Strategy):
    """In-batch negatives plus, per anchor, s + s' synthetic mixes of its N hardest (MoCHi)."""

    Config = MixingConfig
    paper = "Kalantidis et al. 2020, Hard Negative Mixing for Contrastive Learning (MoCHi)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        base = in_batch_negatives(q, k, ctx.ids)
        z, zid, anchors = base.pool, base.pool_ids, base.anchors  # (P, D), (P,), (A, D)
        a, p, d = base.num_anchors, base.pool_size, z.shape[1]
        kb = p - 2  # real negatives per anchor: the other 2B-2 views
        if kb < 1:
            raise StrategyError("mixing: needs at least 2 instances in a batch (no negatives "
                                f"to mix with a batch of {p // 2})")
        n = min(self.cfg.N, kb)
        s, s2 = self.cfg.s, self.cfg.s_prime
        S = s + s2
        dev, dt, g = z.device, z.dtype, ctx.generator

        with torch.no_grad():
            zd, ad = z.detach(), anchors.detach()
            sim = (ad @ zd.T).masked_fill(~base.mask, float("-inf"))  # (A, P)
            ctx.charge_mining(a * p * d)
            hard_sim, hard = sim.topk(n, dim=1)  # (A, N) pool rows of the N hardest, hardest first
            hard_ok = hard_sim > float("-inf")  # (A, N) False only if a row has < N negatives

            i = torch.randint(n, (a, s), generator=g, device=dev)  # (A, s)
            off = torch.randint(max(n - 1, 1), (a, s), generator=g, device=dev)  # (A, s)
            j = (i + 1 + off) % n if n >= 2 else i  # (A, s) a different hard negative
            alpha = torch.rand((a, s), generator=g, device=dev, dtype=dt)  # (A, s)
            jq = torch.randint(n, (a, s2), generator=g, device=dev)  # (A, s')
            beta = 0.5 * torch.rand((a, s2), generator=g, device=dev, dtype=dt)  # (A, s')

            # both parents of every mix as pool rows: (n_i, n_j) for a pair mix, (q, n_j') for a
            # query mix (the anchors are the pool's views: anchor a is pool row a)
            rows = torch.arange(a, device=dev)[:, None].expand(a, s2)  # (A, s')
            first = torch.cat([hard.gather(1, i), rows], dim=1)  # (A, S)
            second = torch.cat([hard.gather(1, j), hard.gather(1, jq)], dim=1)  # (A, S)
            w = torch.cat([alpha, beta], dim=1)  # (A, S) the first parent's weight
            syn = zd[second].lerp_(zd[first], w[..., None])  # (A, S, D) w x + (1 - w) y
            syn = F.normalize(syn, dim=-1)  # (A, S, D)
            ctx.charge_adversary(a * S * d)

            syn_ok = torch.cat([hard_ok.gather(1, i) & hard_ok.gather(1, j),
                                hard_ok.gather(1, jq)], dim=1)  # (A, S)
            src = torch.stack([zid[first], zid[second]], dim=-1)  # (A, S, 2) parents' ids
            src_w = torch.stack([w, 1 - w], dim=-1)  # (A, S, 2) their mixing weights

        return Negatives(
            anchors=anchors,
            positives=base.positives,
            anchor_ids=base.anchor_ids,
            pool=z,  # (P, D) the 2B views
            pool_ids=zid,  # (P,)
            mask=base.mask,  # (A, P)
            extra=syn,  # (A, S, D) detached
            extra_ids=torch.full((a, S), -1, dtype=torch.long, device=dev),  # (A, S)
            extra_mask=syn_ok,  # (A, S)
            extra_sources=src,  # (A, S, 2)
            extra_source_weights=src_w,  # (A, S, 2)
            batch_views=p,
        )
