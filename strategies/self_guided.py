"""Self-guided false-negative filter: in-batch negatives, less those the encoder scores above
the anchor's positive by more than a margin.

Solatorio. "GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding
Fine-tuning", 2024: a guide model scores every in-batch candidate, and a candidate the guide
finds more similar to the anchor than the anchor's own positive is taken for a false negative
and masked out of the loss. sentence-transformers' ``GISTEmbedLoss`` implements it with a margin
(``margin_strategy="absolute"``: masked when guide(a, n) > guide(a, p) - margin). In the
self-guided form there is no second model: the encoder being trained is its own guide, so a
candidate is masked when s_n > s_p + margin, with the margin 0.1 in our default.

NOTE: the guide here is the trained encoder itself, not a frozen pretrained model, so early in
training (when every view looks alike) the rule masks little or at random; the margin sign
follows the issue's definition (a candidate must exceed the positive by more than ``margin``),
which is sentence-transformers' rule with margin -0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import Float, Negatives, StepContext, Strategy, StrategyError, register
from negbench.strategies.kernels import in_batch_scored, not_above_positive


@dataclass(frozen=True)
class SelfGuidedConfig:
    margin: float = 0.1  # mask a candidate with s_n > s_p + margin

    space: ClassVar[dict] = {"margin": Float(-0.1, 0.5)}

    def __post_init__(self):
        if not -2.0 <= self.margin <= 2.0:
            raise StrategyError(f"self-guided: margin must lie in [-2, 2], got {self.margin}")


@register("self-guided")
class SelfGuided(Strategy):
    """In-batch negatives; a candidate scored above the positive by more than a margin is
    masked as a false negative (GISTEmbed's rule with the encoder as its own guide)."""

    Config = SelfGuidedConfig
    cfg: SelfGuidedConfig
    paper = "Solatorio 2024, GISTEmbed (guided in-sample negative selection), self-guided"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs, s, s_pos = in_batch_scored(q, k, ctx.ids)
        with torch.no_grad():
            negs.mask &= not_above_positive(s, s_pos, self.cfg.margin)
        return negs
