"""False-negative-free in-batch negatives: an oracle reference, not a strategy to rank.

Chuang, Robinson, Lin, Torralba, Jegelka. "Debiased Contrastive Learning", NeurIPS 2020: their
"unbiased" objective, the bound the debiased estimator approaches, contrasts each anchor with
true negatives only. Here: SimCLR's in-batch selection (every other view of the batch) with
every candidate of the anchor's own class removed, read from the oracle labels.

Its accuracy minus in-batch's is the **false-negative headroom** of a suite: the most that
handling false negatives could gain there at that budget. It reads labels (``oracle = True``),
so it is shown as a bound and never ranked or named a winner.

NOTE: an anchor whose batch holds only its own class keeps no negative (its loss is then 0), as
in the unbiased objective with no negative sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from negbench.strategies import Negatives, StepContext, Strategy, register
from negbench.strategies.kernels import in_batch_same_class


@dataclass(frozen=True)
class FnFreeConfig:
    """No knobs of its own: the batch and temperature belong to the run."""

    space: ClassVar[dict] = {}


@register("fn-free")
class FnFree(Strategy):
    """In-batch negatives with every same-class candidate removed (oracle labels)."""

    Config = FnFreeConfig
    cfg: FnFreeConfig
    paper = "Chuang et al. 2020 (unbiased reference)"
    oracle = True

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs, same = in_batch_same_class(q, k, ctx, self.name)
        negs.mask &= ~same  # (2B, 2B) true negatives only
        return negs
