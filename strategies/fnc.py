"""FNC: false-negative cancellation with a support set of extra views of each anchor.

Huynh, Kornblith, Walter, Maire, Khademi. "Boosting Contrastive Self-Supervised Learning with
False Negative Cancellation", WACV 2022. Each anchor image gets a support set of extra augmented
views; every candidate view of another image is scored by its largest similarity to any view of
the anchor (its two training views and the support views), and the candidates in the anchor's
top-k by that score *and* above a threshold are taken for false negatives. They then leave the
denominator (``mode = "elimination"``) or, in addition, join the numerator as further positives
(``"attraction"``: the anchor's log-probability is averaged over its positive and them, with all
of them in the denominator, as SupCon's L_out does).

Verified against the authors' code (google-research/fnc, ``objective.py``, ``run.py``):
support views 8, top-k 10, threshold 0.7 on cosines, the score a max over the anchor's views,
top-k AND threshold, detection once per anchor image (shared by its views), no gradient through
the detection, and attraction as released (log-probabilities averaged over the positive views
and the detected ones, the denominator keeping every non-self entry).

NOTE: the support views are encoded without gradients through the encoder (``ctx.encode(ids,
False)``, charged to the cost meter as no-grad encodes); in the authors' code every view of a
multi-view batch is trained, but only the two main views here, as every strategy of the harness
trains two views per item.
NOTE: candidates are the batch's other views (SimCLR's in-batch pool); the authors' default
searches a memory bank of 16 batches of momentum-encoder keys instead.
NOTE: the released code has attraction only; ``elimination`` follows the paper's description
(the detected candidates removed from the denominator) and is offered as the other mode.
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
from negbench.strategies.kernels import in_batch_scored, pick_k

MODES = ("attraction", "elimination")


@dataclass(frozen=True)
class FNCConfig:
    support: int = 8  # extra views of each anchor image, for detection only
    top_k: int = 10  # a false negative is in the anchor's top_k by its support score ...
    threshold: float = 0.7  # ... and scores above this cosine
    mode: str = "attraction"  # attraction (as released) | elimination

    space: ClassVar[dict] = {
        "top_k": Int(1, 64, log=True),
        "threshold": Float(0.3, 0.95),
        "mode": Choice(MODES),
    }

    def __post_init__(self):
        if self.support < 0:
            raise StrategyError(f"fnc: support must be >= 0, got {self.support}")
        if self.top_k < 1:
            raise StrategyError(f"fnc: top_k must be >= 1, got {self.top_k}")
        if not -1.0 <= self.threshold <= 1.0:
            raise StrategyError(f"fnc: threshold must lie in [-1, 1], got {self.threshold}")
        if self.mode not in MODES:
            raise StrategyError(f"fnc: mode must be one of {', '.join(MODES)}; got {self.mode!r}")


def fnc_detect(score: Tensor, valid: Tensor, top_k: int, threshold: float,
               generator: torch.Generator) -> Tensor:
    """(B, P) bool: each anchor image's false negatives among the ``valid`` (B, P) candidates,
    from ``score`` (B, P), a candidate's largest cosine to any view of the image: in its top_k
    by score and above ``threshold``."""
    top = pick_k(score, valid, top_k, "top", generator)  # (B, P) the top_k valid
    return top & (score > threshold)


@register("fnc")
class FNC(Strategy):
    """In-batch negatives; those a support set of extra views finds too close to the anchor
    leave the denominator, and with attraction join the positives."""

    Config = FNCConfig
    cfg: FNCConfig
    paper = "Huynh et al. 2022, false negative cancellation (WACV)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        b = q.shape[0]
        negs, s, _ = in_batch_scored(q, k, ctx.ids)  # (A, P), the objective reuses it
        with torch.no_grad():
            # a candidate's score: its largest cosine to a view of the anchor image; the two
            # training views' rows are in the batch's own product already
            score = torch.maximum(s[:b], s[b:])  # (B, P)
            if cfg.support:
                sup = ctx.encode(ctx.ids.repeat(cfg.support), False).detach().to(q.dtype)
                pool = negs.pool.detach()
                ctx.charge_mining(sup.shape[0] * pool.shape[0] * q.shape[1])
                score = torch.maximum(score, (sup @ pool.T).view(cfg.support, b, -1).amax(0))
            fn = fnc_detect(score, negs.mask[:b], cfg.top_k, cfg.threshold,
                            ctx.generator)  # (B, 2B)
            fn = torch.cat([fn, fn])  # (2B, 2B) shared by the image's two anchor views
            negs.mask = negs.mask & ~fn
            if cfg.mode == "attraction":
                negs.extra_positives = fn
        return negs
