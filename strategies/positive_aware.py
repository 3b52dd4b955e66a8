"""Positive-aware hard negatives: the hardest candidates, but only those scored below the
anchor's positive.

Moreira et al. "NV-Retriever: Improving text embedding models with effective hard-negative
mining", 2024: a candidate scored too close to the positive is likely a false negative, so hard
negatives are kept only below a threshold set by the positive's score; their best method,
TopK-PercPos, keeps s_n below 95% of s_p (``relative = 0.05``). sentence-transformers'
``util.mine_hard_negatives`` offers the same rule set offline: a rank window ``[range_min,
range_max)`` of the candidates by similarity, an ``absolute_margin`` (a negative scored above
s_p - margin is dropped) and a ``relative_margin`` (above (1 - margin) s_p, dropped), then
``num_negatives`` (3 there) taken as the hardest (``sampling_strategy="top"``, its default) or
at random from what is left; with several positives it compares with the smallest positive
score. Here it is done online, each step, over the in-batch candidates (SimCLR's 2B - 2 views
of other instances), where each anchor has one positive.

Defaults: ``relative = 0.05`` (TopK-PercPos), no absolute margin (-1 turns a margin off), the
whole ranking (``range_min = 0``, ``range_max = 0`` meaning no upper end), ``K = 0`` (every
kept candidate: the harness contrasts against the whole kept set, as in-batch InfoNCE does).

NOTE: NV-Retriever mines from a corpus with a teacher model before training; here the scores
are the encoder's own, on the batch, at every step (no teacher, no offline index), so the rule
filters the encoder's current view of what is too close to the positive.
NOTE: ``K = 0`` (every kept candidate) by default, where sentence-transformers takes 3: the
objective here contrasts each anchor with all its selected negatives, as in-batch InfoNCE does.
NOTE: a candidate is kept when strictly below the thresholds (the issue's s_n < s_p - margin);
sentence-transformers drops only those strictly above, so an exact tie falls the other way.
NOTE: with cosine scores a relative margin on a negative s_p tightens the wrong way (0.95 s_p >
s_p when s_p < 0); both margins are applied as written, and an anchor whose positive scores
below 0 keeps only the candidates further still.
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
from negbench.strategies.kernels import below_positive, in_batch_scored, pick_k, rank_desc

SAMPLING = ("top", "random")


@dataclass(frozen=True)
class PositiveAwareConfig:
    relative: float = 0.05  # keep s_n < (1 - relative) s_p; < 0: off (TopK-PercPos: 0.05)
    absolute: float = -1.0  # keep s_n < s_p - absolute; < 0: off
    range_min: int = 0  # skip the range_min most similar candidates
    range_max: int = 0  # consider ranks below range_max only; 0: no upper end
    K: int = 0  # at most K kept negatives per anchor; 0: every kept one
    sampling: str = "top"  # top (the K hardest kept) | random (K kept at random)

    space: ClassVar[dict] = {
        "relative": Float(0.0, 0.3),
        "range_min": Int(0, 16),
        "K": Int(0, 256),
        "sampling": Choice(SAMPLING),
    }

    def __post_init__(self):
        if self.relative >= 1:
            raise StrategyError(f"positive-aware: relative must be < 1 (< 0: off), got "
                                f"{self.relative}")
        if self.absolute > 2:
            raise StrategyError(f"positive-aware: absolute must be <= 2 (< 0: off), got "
                                f"{self.absolute}")
        if self.range_min < 0 or self.range_max < 0 or (
                self.range_max and self.range_max <= self.range_min):
            raise StrategyError("positive-aware: need 0 <= range_min < range_max (range_max 0: "
                                f"no upper end); got [{self.range_min}, {self.range_max})")
        if self.K < 0:
            raise StrategyError(f"positive-aware: K must be >= 0 (0: all kept), got {self.K}")
        if self.sampling not in SAMPLING:
            raise StrategyError(f"positive-aware: sampling must be one of {', '.join(SAMPLING)};"
                                f" got {self.sampling!r}")


def positive_aware_mask(s: Tensor, s_pos: Tensor, valid: Tensor, cfg: PositiveAwareConfig,
                        generator: torch.Generator) -> Tensor:
    """(A, P) bool: the kept negatives among the ``valid`` candidates of similarities ``s``
    (A, P) to anchors whose positives score ``s_pos`` (A,)."""
    keep = valid.clone()
    if cfg.range_min or cfg.range_max:
        r = rank_desc(s, valid)  # (A, P)
        keep &= r >= cfg.range_min
        if cfg.range_max:
            keep &= r < cfg.range_max
    keep &= below_positive(s, s_pos, cfg.absolute, cfg.relative)
    return pick_k(s, keep, cfg.K, cfg.sampling, generator)


@register("positive-aware")
class PositiveAware(Strategy):
    """In-batch candidates kept only below the positive's score (NV-Retriever's rule)."""

    Config = PositiveAwareConfig
    cfg: PositiveAwareConfig
    paper = "Moreira et al. 2024, NV-Retriever (positive-aware hard-negative mining)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs, s, s_pos = in_batch_scored(q, k, ctx.ids)
        with torch.no_grad():
            negs.mask = positive_aware_mask(s, s_pos, negs.mask, self.cfg, ctx.generator)
        return negs
