"""Memory bank: a FIFO queue of keys from a momentum key encoder.

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation Learning"
(MoCo), CVPR 2020. Each anchor q (the query view, through the trained encoder) is contrasted with
its key k (the other view, through a momentum copy of the encoder, theta_k <- m theta_k +
(1 - m) theta_q, which the harness keeps because :attr:`MemoryBank.key_momentum` asks for it) and
with the K keys of earlier batches held in a queue. After the loss, the batch's keys are enqueued
and the oldest ones dequeued.

The dataset id of every queued key is kept beside it, so that the harness can measure the
false-negative rate; empty slots have id -1 and are never selected. A queued key of the anchor's
own instance (the queue can hold one from an earlier epoch) is masked out of its negatives, and
the harness counts it as an instance collision (``batch_views`` is 0: no pool row is one of this
step's views). With the default K = 4096 on a training set smaller than K (digits trains on
about 1,260 items) the full queue holds about three keys of each instance, of up to 16 steps
ago: an anchor's own are masked and counted as collisions, the others remain negatives.

NOTE: MoCo's shuffled BatchNorm (a multi-GPU remedy against BN leaking the batch) is not
reproduced: the harness's key encoder is a plain momentum copy on one device.
NOTE: the queue is not randomly initialised as in MoCo's code: it starts empty and its empty
slots are masked, so the first step has no negatives (the loss is then 0) and the pool grows by
one batch per step until the queue is full.
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
from negbench.strategies.kernels import fifo_enqueue


@dataclass(frozen=True)
class MemoryBankConfig:
    K: int = 4096  # queue length (number of queued keys)
    m: float = 0.99  # momentum of the key encoder

    space: ClassVar[dict] = {"K": Int(256, 16384, log=True), "m": Float(0.9, 0.999)}

    def __post_init__(self):
        if self.K < 1:
            raise StrategyError(f"memory-bank: K (queue length) must be >= 1, got {self.K}")
        if not 0.0 <= self.m < 1.0:
            raise StrategyError(f"memory-bank: m (key-encoder momentum) must lie in [0, 1), "
                                f"got {self.m}")


@register("memory-bank")
class MemoryBank(Strategy):
    """MoCo's queue of K momentum-encoder keys; own instance masked, empty slots masked."""

    Config = MemoryBankConfig
    cfg: MemoryBankConfig
    paper = "He et al. 2020, MoCo"

    def __init__(self, cfg: MemoryBankConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.register_buffer("queue", torch.zeros(cfg.K, dim))  # (K, D)
        self.register_buffer("queue_ids", torch.full((cfg.K,), -1, dtype=torch.long))  # (K,)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write

    @property
    def key_momentum(self) -> float:
        return self.cfg.m

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        # Copies, not views: ``update`` overwrites the queue in place after the loss, and the
        # harness reads the returned ids (its meter) after ``update``.
        pool = self.queue.detach().clone().to(q.dtype)  # (K, D)
        pool_ids = self.queue_ids.clone()  # (K,)
        mask = (pool_ids[None, :] >= 0) & (ctx.ids[:, None] != pool_ids[None, :])  # (B, K)
        return Negatives(
            anchors=q,
            positives=k,
            anchor_ids=ctx.ids,
            pool=pool,
            pool_ids=pool_ids,
            mask=mask,
            batch_views=0,
        )

    @torch.no_grad()
    def update(self, q: Tensor, k: Tensor, ctx: StepContext) -> None:
        """Enqueue the batch's keys at ``ptr`` (wrapping around), dequeuing the oldest."""
        fifo_enqueue(self.queue, self.queue_ids, self.ptr, k, ctx.ids)
