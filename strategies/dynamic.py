"""Dynamic hard negatives mined from an index of the whole training set, refreshed periodically.

Xiong, Xiong, Li, Tang, Liu, Bennett, Ahmed, Overwijk. "Approximate Nearest Neighbor Negative
Contrastive Learning for Dense Text Retrieval" (ANCE), ICLR 2021. ANCE keeps an ANN index of the
whole corpus embedded by a recent checkpoint, refreshes it as training goes on, and trains each
query against negatives retrieved from that index.

Here:

- The index is a buffer of the whole training set's embeddings (n_train, D), re-embedded with
  ``ctx.encode_all()`` (a no-grad encode the harness charges) exactly at the steps where
  ``ctx.step % R == 0`` (step 0 included). If the first step this strategy sees is not a multiple
  of R (a resumed run), the empty index is filled then.
- Each anchor q ranks the index by cosine similarity, its own instance excluded, and takes K
  neighbours inside the rank window [r_min, r_max) (rank 0 = the most similar other item): the
  top r_min ranks, the likeliest false negatives, are skipped.
- ``pick="top"`` (default, the issue's "top-k inside the window"): ranks r_min .. r_min+K-1.
  ``pick="sample"`` (ANCE): K distinct ranks drawn uniformly inside the window from
  ``ctx.generator``.
- The mined items are encoded fresh in the step with ``ctx.encode(ids, grad)`` (with gradients
  by default, as ANCE trains through its negatives' encodes), and returned in the index form of
  :class:`Negatives`: the pool is the B*K fresh encodes and row b of the index points at anchor
  b's K of them, so memory stays O(B x K).
- Search is exact: chunks of anchors against the whole index with torch top-k (chunks hold at
  most ``chunk`` similarities); B*N*D multiply-adds are charged per step. When ``faiss`` is
  importable and n_train >= ``faiss_min_n``, an exact inner-product faiss index (built at each
  refresh) does the search instead.

NOTE: ANCE refreshes its index asynchronously from a checkpoint every few thousand steps and
samples its negatives from the top 200 retrieved; here the refresh is synchronous every R steps,
the default takes the top ranks of the window rather than sampling it (``pick="sample"`` is ANCE's
rule), and the anchors search with their current (augmented-view) embedding against the index's
un-augmented, possibly stale, embeddings.
NOTE: r_max is clipped to n_train - 1 (the items other than the anchor's own instance).
NOTE: an item mined by several anchors of a step is encoded once per anchor (no de-duplication,
which would need a data-dependent shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies import (
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


@dataclass(frozen=True)
class DynamicConfig:
    K: int = 8  # negatives per anchor
    R: int = 50  # steps between index refreshes
    r_min: int = 2  # first rank of the window (ranks below are skipped: likeliest false negatives)
    r_max: int = 64  # end of the window (exclusive)
    pick: str = "top"  # top: ranks r_min .. r_min+K-1 | sample: K uniform draws in the window
    grad: bool = True  # train through the mined items' encodes
    chunk: int = 1 << 22  # most similarities held at once by the exact search
    faiss_min_n: int = 200_000  # use faiss (if importable) for training sets at least this large

    space: ClassVar[dict] = {
        "K": Int(2, 32, log=True),  # K <= 32 <= r_max - r_min everywhere in this space
        "R": Int(10, 500, log=True),
        "r_min": Int(0, 32),
        "r_max": Int(64, 512, log=True),
        "pick": Choice(PICKS),
    }

    def __post_init__(self):
        if self.K < 1:
            raise StrategyError(f"dynamic: K must be >= 1, got {self.K}")
        if self.R < 1:
            raise StrategyError(f"dynamic: R (steps between refreshes) must be >= 1, got {self.R}")
        if self.r_min < 0:
            raise StrategyError(f"dynamic: r_min must be >= 0, got {self.r_min}")
        if self.r_max - self.r_min < self.K:
            raise StrategyError(f"dynamic: the rank window [r_min, r_max) = [{self.r_min}, "
                                f"{self.r_max}) must hold at least K={self.K} ranks")
        if self.pick not in PICKS:
            raise StrategyError(f"dynamic: pick must be one of {', '.join(PICKS)}; "
                                f"got {self.pick!r}")
        if self.chunk < 1:
            raise StrategyError(f"dynamic: chunk must be >= 1, got {self.chunk}")
        if self.faiss_min_n < 1:
            raise StrategyError(f"dynamic: faiss_min_n must be >= 1, got {self.faiss_min_n}")


@register("dynamic")
class Dynamic(Strategy):
    """ANCE-style negatives: a rank window of each anchor's neighbours in a periodically
    refreshed whole-training-set index, encoded fresh."""

    Config = DynamicConfig
    paper = "Xiong et al. 2021, ANCE"

    def __init__(self, cfg: DynamicConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.r_max = min(cfg.r_max, n_train - 1)
        if self.r_max - cfg.r_min < cfg.K:
            raise StrategyError(
                f"dynamic: with n_train={n_train} the rank window [r_min, r_max) = "
                f"[{cfg.r_min}, {self.r_max}) holds fewer than K={cfg.K} ranks; lower K or r_min")
        self.register_buffer("index", torch.zeros(n_train, dim))  # (N, D) embeddings of the set
        self.refreshed_at = -1  # host int: the step of the last refresh (-1: never)
        self.refreshes = 0  # host int: how many refreshes so far
        self._faiss = None  # faiss index built at the last refresh (large sets only)

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
        if faiss is not None and self.n_train >= self.cfg.faiss_min_n:
            self._faiss = _faiss_build(self.index)

    def _due(self, step: int) -> bool:
        if step == self.refreshed_at:  # select() called twice in one step: refresh once
            return False
        return step % self.cfg.R == 0 or self.refreshed_at < 0

    # -- the search
    def ranked(self, q: Tensor, ids: Tensor, kk: int) -> Tensor:
        """(B, kk) index rows of each anchor's kk most similar items, most similar first, its
        own instance excluded."""
        if self._faiss is not None:
            return _faiss_ranked(self._faiss, q, ids, kk)
        n = self.index.shape[0]
        index = self.index.to(q.dtype)  # (N, D)
        c = max(1, self.cfg.chunk // n)  # anchors per chunk
        out = []
        for a0 in range(0, q.shape[0], c):  # chunks of anchors
            s = q[a0:a0 + c] @ index.T  # (C, N)
            s.scatter_(1, ids[a0:a0 + c, None], float("-inf"))  # own instance ranks last
            out.append(s.topk(kk, dim=1).indices)  # (C, kk) sorted, most similar first
        return torch.cat(out)  # (B, kk)

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        if self._due(ctx.step):
            self.refresh(ctx)
        b, d = q.shape
        lo = cfg.r_min
        with torch.no_grad():
            if cfg.pick == "top":
                mined = self.ranked(q, ctx.ids, lo + cfg.K)[:, lo:]  # (B, K)
            else:
                window = self.ranked(q, ctx.ids, self.r_max)[:, lo:]  # (B, W)
                u = torch.rand(window.shape, generator=ctx.generator, device=q.device)  # (B, W)
                pick = u.topk(cfg.K, dim=1).indices  # (B, K) K distinct ranks, uniform
                mined = window.gather(1, pick)  # (B, K)
        ctx.charge_mining(b * self.n_train * d)
        flat = mined.reshape(-1)  # (B*K,)
        pool = ctx.encode(flat, cfg.grad)  # (B*K, D) fresh encodes
        index = torch.arange(b * cfg.K, device=q.device).view(b, cfg.K)  # (B, K) rows of the pool
        return Negatives(
            anchors=q,
            positives=k,
            anchor_ids=ctx.ids,
            pool=pool,
            pool_ids=flat,
            index=index,
        )


# --------------------------------------------------------------------------- faiss (optional)
# NOTE: untested here (faiss is not installed in this environment). faiss searches on the host,
# so this path copies the anchors to the host and back each step (a sync), which only pays off
# for training sets far larger than the torch path handles comfortably.
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
