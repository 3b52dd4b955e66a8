"""Uniform random negatives from the whole training set, encoded fresh.

The word2vec-style baseline (Mikolov et al. 2013, negative sampling), here with a uniform noise
distribution: each step draws K training items uniformly, embeds one augmented view of each
through the encoder (charged to the cost meter as extra trained samples, or as no-grad encodes
when ``backprop`` is off), and every anchor of the batch uses all of them except its own instance.

NOTE: the K draws are shared by the B anchors of a step (one pool per step rather than K draws per
anchor), which keeps the cost at K encodes instead of B*K; each anchor's negatives are still a
uniform sample of the training set without its own instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import Int, Negatives, StepContext, Strategy, StrategyError, register


@dataclass(frozen=True)
class RandomConfig:
    K: int = 256  # negatives drawn per step
    backprop: bool = True  # train through the negatives' encodes (word2vec updates them too)

    space: ClassVar[dict] = {"K": Int(64, 1024, log=True)}

    def __post_init__(self):
        if self.K < 1:
            raise StrategyError(f"random: K must be >= 1, got {self.K}")


@register("random")
class Random(Strategy):
    """K uniform draws from the training set per step, own instance masked."""

    Config = RandomConfig
    cfg: RandomConfig
    paper = "Mikolov et al. 2013 (negative sampling), uniform noise distribution"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        ids = torch.randint(ctx.n_train, (self.cfg.K,), generator=ctx.generator,
                            device=q.device)  # (K,)
        pool = ctx.encode(ids, self.cfg.backprop)  # (K, D)
        return Negatives(
            anchors=q,
            positives=k,
            anchor_ids=ctx.ids,
            pool=pool,
            pool_ids=ids,
            mask=ctx.ids[:, None] != ids[None, :],  # (B, K): an anchor drawn for itself is dropped
        )
