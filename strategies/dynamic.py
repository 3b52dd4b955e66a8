"""Dynamic hard negatives mined from an index of the whole training set, refreshed periodically.

Xiong, Xiong, Li, Tang, Liu, Bennett, Ahmed, Overwijk. "Approximate Nearest Neighbor Negative
Contrastive Learning for Dense Text Retrieval" (ANCE), ICLR 2021. ANCE keeps an ANN index of the
whole corpus embedded by a recent checkpoint and refreshes it as training goes on; at each
refresh the same checkpoint embeds every training query, retrieves its neighbours from the
refreshed index, and training draws each query's negatives from those until the next refresh.

Here:

- The index is a buffer of the whole training set's embeddings (n_train, D), re-embedded with
  ``ctx.encode_all()`` (a no-grad encode the harness charges) exactly at the steps where
  ``ctx.step % R == 0`` (step 0 included). ``R = 0`` (the default) means once per epoch:
  R = ceil(n_train / B) with B the batch the strategy sees. If the first step this strategy sees
  is not a multiple of R (a resumed run), the empty index is filled then.
- An item's neighbours are the index ranked by cosine similarity to a query, its own instance
  excluded; the item takes K of them inside the rank window [r_min, r_max) (rank 0 = the most
  similar other item): the top r_min ranks, the likeliest false negatives, are skipped.
- ``search="refresh"`` (default, ANCE's design): at each refresh, every training item queries
  the refreshed index with its own index embedding (the checkpoint's un-augmented embedding, as
  ANCE queries with the checkpoint's query embedding), and the window is kept in the buffer
  ``neighbours``: (N, K) index rows for ``pick="top"`` (only those ranks can be taken), (N,
  r_max - r_min) for ``pick="sample"``. A step only looks up its anchors' rows,
  ``neighbours[ids]``: O(B x K) (O(B x (r_max - r_min)) to sample), no search. The refresh search
  costs N*N*D multiply-adds, charged as mining at the refresh; ordinary steps charge none.
- ``search="step"``: each step, each anchor searches the whole index with its current
  (augmented-view) embedding q, against the index's un-augmented, possibly stale embeddings;
  B*N*D multiply-adds charged per step. Fresher per-anchor queries, but a slow step: a search
  of the whole index in every step.
- ``pick="top"`` (default, the issue's "top-k inside the window"): ranks r_min .. r_min+K-1.
  ``pick="sample"`` (ANCE): K distinct ranks drawn uniformly inside the window from
  ``ctx.generator`` at each step.
- The mined items are encoded fresh in the step with ``ctx.encode(ids, grad)`` (with gradients
  by default, as ANCE trains through its negatives' encodes), and returned in the index form of
  :class:`Negatives`: the pool is the B*K fresh encodes and row b of the index points at anchor
  b's K of them, so memory stays O(B x K). Anchor b's K rows are contiguous, so the (B, K)
  similarities the objective needs come from a view of the pool (``Negatives.sim``), with no
  (B, K, D) gather and no scatter-add of it in the backward.
- Search is exact: chunks of queries against the whole index with torch top-k (chunks hold at
  most ``chunk`` similarities). When ``faiss`` is importable and n_train >= ``faiss_min_n``, an
  exact inner-product faiss index (built at each refresh) does the search instead.
- State: the index (N, D) and, with ``search="refresh"``, the window table (N, K) or (N, r_max -
  r_min) int64.

Cost of a refresh, with the default ``search="refresh"``: N no-grad encodes plus an N x N x D
search (at N=50,000, D=128: 3.2e11 multiply-adds). Spread over R
steps that is N*N*D/R multiply-adds a step against the step mode's B*N*D: the same when R*B = N,
which is why the default refreshes once per epoch (R = 0): the two modes then do the same mining
work in all, and the refresh mode none of it in an ordinary step. A fixed R makes the refresh
mode cheaper in all when R*B > N and dearer when R*B < N (fashion-mnist, N=55,000 at B=256 and
R=100: about 2x).

NOTE: ANCE refreshes its index asynchronously from a checkpoint every few thousand steps and
samples its negatives from the top 200 retrieved; here the refresh is synchronous every R steps
and the default takes the top ranks of the window rather than sampling it (``pick="sample"`` is
ANCE's rule). ``search="step"`` departs further: its anchors search with their current
augmented-view embedding every step instead of the checkpoint's embedding at the refresh.
NOTE: r_max is clipped to n_train - 1 (the items other than the anchor's own instance).
NOTE: an item mined by several anchors of a step is encoded once per anchor (no de-duplication,
which would need a data-dependent shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Choice,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)

try:  # optional: only used for large training sets
    import faiss  # type: ignore[import-not-found]
except ImportError:  # the default: exact torch search
    faiss = None

PICKS = ("top", "sample")
SEARCHES = ("refresh", "step")


@dataclass(frozen=True)
class DynamicConfig:
    K: int = 8  # negatives per anchor
    R: int = 0  # steps between index refreshes; 0: once per epoch (ceil(n_train / B))
    r_min: int = 2  # first rank of the window (ranks below are skipped: likeliest false negatives)
    r_max: int = 64  # end of the window (exclusive)
    pick: str = "top"  # top: ranks r_min .. r_min+K-1 | sample: K uniform draws in the window
    search: str = "refresh"  # refresh: every item's window found at the refresh (ANCE) | step:
    #                          each anchor's current view searches the index every step
    grad: bool = True  # train through the mined items' encodes
    chunk: int = 1 << 22  # most similarities held at once by the exact search
    faiss_min_n: int = 200_000  # use faiss (if importable) for training sets at least this large

    # search is left out: it is how the window is found (and what it costs), not a knob of ANCE
    space: ClassVar[dict] = {
        "K": Int(2, 32, log=True),  # K <= 32 <= r_max - r_min everywhere in this space
        "R": Choice((0, 25, 50, 100, 200, 400)),  # 0: once per epoch
        "r_min": Int(0, 32),
        "r_max": Int(64, 512, log=True),
        "pick": Choice(PICKS),
    }

    def __post_init__(self):
        if self.K < 1:
            raise StrategyError(f"dynamic: K must be >= 1, got {self.K}")
        if self.R < 0:
            raise StrategyError(f"dynamic: R (steps between refreshes) must be >= 0 (0: once per "
                                f"epoch), got {self.R}")
        if self.r_min < 0:
            raise StrategyError(f"dynamic: r_min must be >= 0, got {self.r_min}")
        if self.r_max - self.r_min < self.K:
            raise StrategyError(f"dynamic: the rank window [r_min, r_max) = [{self.r_min}, "
                                f"{self.r_max}) must hold at least K={self.K} ranks")
        if self.pick not in PICKS:
            raise StrategyError(f"dynamic: pick must be one of {', '.join(PICKS)}; "
                                f"got {self.pick!r}")
        if self.search not in SEARCHES:
            raise StrategyError(f"dynamic: search must be one of {', '.join(SEARCHES)}; "
                                f"got {self.search!r}")
        if self.chunk < 1:
            raise StrategyError(f"dynamic: chunk must be >= 1, got {self.chunk}")
        if self.faiss_min_n < 1:
            raise StrategyError(f"dynamic: faiss_min_n must be >= 1, got {self.faiss_min_n}")


@register("dynamic")
class Dynamic(Strategy):
    """ANCE-style negatives: a rank window of each anchor's neighbours in a periodically
    refreshed whole-training-set index, encoded fresh."""

    Config = DynamicConfig
    cfg: DynamicConfig
    paper = "Xiong et al. 2021, ANCE"

    def __init__(self, cfg: DynamicConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.r_max = min(cfg.r_max, n_train - 1)
        if self.r_max - cfg.r_min < cfg.K:
            raise StrategyError(
                f"dynamic: with n_train={n_train} the rank window [r_min, r_max) = "
                f"[{cfg.r_min}, {self.r_max}) holds fewer than K={cfg.K} ranks; lower K or r_min")
        # ranks a search returns: through the last one the pick can take
        self.ranks = cfg.r_min + cfg.K if cfg.pick == "top" else self.r_max
        width = self.ranks - cfg.r_min if cfg.search == "refresh" else 0
        self.register_buffer("index", torch.zeros(n_train, dim))  # (N, D) embeddings of the set
        # (N, K | r_max - r_min) each item's window of index rows, found at the last refresh
        # (empty with search="step")
        self.register_buffer("neighbours", torch.zeros(n_train, width, dtype=torch.long))
        self.refreshed_at = -1  # host int: the step of the last refresh (-1: never)
        self.refreshes = 0  # host int: how many refreshes so far
        self._faiss = None  # faiss index built at the last refresh (search="step", large sets)

    # -- the index
    @torch.no_grad()
    def refresh(self, ctx: StepContext) -> None:
        emb = ctx.encode_all()  # (N, D), charged by the harness
        if tuple(emb.shape) != tuple(self.index.shape):
            raise StrategyError(f"dynamic: encode_all() returned {tuple(emb.shape)}, "
                                f"expected {tuple(self.index.shape)}")
        self.index.copy_(emb.detach())
        self.refreshed_at = ctx.step
        self.refreshes += 1
        self._faiss = None
        use_faiss = faiss is not None and self.n_train >= self.cfg.faiss_min_n
        if self.cfg.search == "step":
            if use_faiss:
                self._faiss = _faiss_build(self.index)
            return
        # ANCE: every training item queries the refreshed index with its own embedding
        n, d = self.index.shape
        rows = torch.arange(n, device=self.index.device)  # (N,) each item's own row
        if use_faiss:  # NOTE: untested here (faiss is not installed in this environment)
            ranked = _faiss_ranked(_faiss_build(self.index), self.index, rows, self.ranks)
        else:
            ranked = self.ranked(self.index, rows, self.ranks)  # (N, ranks)
        self.neighbours.copy_(ranked[:, self.cfg.r_min:])  # (N, K | r_max - r_min)
        ctx.charge_mining(n * n * d)

    def period(self, b: int) -> int:
        """R in steps: the configured one, or one epoch of batches of ``b`` when R = 0."""
        return self.cfg.R or -(-self.n_train // b)

    def _due(self, step: int, b: int) -> bool:
        if step == self.refreshed_at:  # select() called twice in one step: refresh once
            return False
        return step % self.period(b) == 0 or self.refreshed_at < 0

    # -- the search
    @torch.no_grad()
    def ranked(self, q: Tensor, ids: Tensor, kk: int) -> Tensor:
        """(B, kk) index rows of each query's kk most similar items, most similar first, its
        own instance (``ids``) excluded."""
        if self._faiss is not None:
            return _faiss_ranked(self._faiss, q, ids, kk)
        (b, _), n = q.shape, self.index.shape[0]
        index = self.index.to(q.dtype)  # (N, D)
        c = min(b, max(1, self.cfg.chunk // n))  # queries per chunk
        # one similarity buffer, reused by every chunk, and the result written in place: a
        # refresh runs N / C chunks, and fresh per-chunk blocks fragment the host heap
        # (gigabytes of RSS at N=50,000)
        s = torch.empty(c, n, dtype=q.dtype, device=q.device)  # (C, N)
        top = torch.empty(c, kk, dtype=q.dtype, device=q.device)  # (C, kk) similarities
        out = torch.empty(b, kk, dtype=torch.long, device=q.device)  # (B, kk)
        for a0 in range(0, b, c):  # chunks of queries
            m = min(c, b - a0)
            torch.mm(q[a0:a0 + m], index.T, out=s[:m])  # (m, N)
            s[:m].scatter_(1, ids[a0:a0 + m, None], float("-inf"))  # own instance ranks last
            # (m, kk) sorted, most similar first
            torch.topk(s[:m], kk, dim=1, out=(top[:m], out[a0:a0 + m]))
        return out  # (B, kk)

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        if self._due(ctx.step, q.shape[0]):
            self.refresh(ctx)
        b, d = q.shape
        with torch.no_grad():
            if cfg.search == "refresh":
                window = self.neighbours[ctx.ids]  # (B, K | r_max - r_min) found at the refresh
            else:
                window = self.ranked(q, ctx.ids, self.ranks)[:, cfg.r_min:]  # (B, K | W)
                ctx.charge_mining(b * self.n_train * d)
            if cfg.pick == "top":
                mined = window  # (B, K) ranks r_min .. r_min+K-1
            else:
                u = torch.rand(window.shape, generator=ctx.generator, device=q.device)  # (B, W)
                pick = u.topk(cfg.K, dim=1).indices  # (B, K) K distinct ranks, uniform
                mined = window.gather(1, pick)  # (B, K)
        flat = mined.reshape(-1)  # (B*K,)
        pool = ctx.encode(flat, cfg.grad)  # (B*K, D) fresh encodes
        index = torch.arange(b * cfg.K, device=q.device).view(b, cfg.K)  # (B, K) rows of the pool
        # the objective's similarities from a view of the pool (anchor b's K rows are
        # contiguous): no (B, K, D) gather, and no scatter-add of it in the backward. A product
        # and a sum, not bmm: bmm of B (K, D) x (D, 1) products is slower on CPUs, forward and
        # backward
        cand = pool.to(q.dtype).view(b, cfg.K, d)  # (B, K, D)
        sim = (cand * q[:, None, :]).sum(2)  # (B, K) with gradients
        return Negatives(
            anchors=q,
            positives=k,
            anchor_ids=ctx.ids,
            pool=pool,
            pool_ids=flat,
            index=index,
            sim=sim,
        )


# --------------------------------------------------------------------------- faiss (optional)
# NOTE: untested here (faiss is not installed in this environment). faiss searches on the host:
# with search="step" this path copies the anchors to the host and back each step (a sync), which
# only pays off for training sets far larger than the torch path handles comfortably; with
# search="refresh" the copies (and the sync) happen at the refresh only.
def _faiss_build(index: Tensor):
    x = index.detach().float().cpu().contiguous().numpy()  # (N, D)
    ix = faiss.IndexFlatIP(x.shape[1])  # exact inner product
    ix.add(x)
    return ix


def _faiss_ranked(ix, q: Tensor, ids: Tensor, kk: int) -> Tensor:
    s, i = ix.search(q.detach().float().cpu().contiguous().numpy(), kk + 1)  # (B, kk+1) each
    s = torch.from_numpy(s).to(q.device)  # (B, kk+1)
    i = torch.from_numpy(i).to(device=q.device, dtype=torch.long)  # (B, kk+1)
    s = s.masked_fill(i == ids[:, None], float("-inf"))  # (B, kk+1) own instance last
    order = s.topk(kk, dim=1).indices  # (B, kk)
    return i.gather(1, order)  # (B, kk)
