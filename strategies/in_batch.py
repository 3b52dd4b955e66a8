"""In-batch negatives: the other 2B-2 views of the batch.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR), ICML 2020. Both views act as anchors (NT-Xent is symmetric): anchor
i's positive is its other view, its negatives every other view in the batch. The selection is
:func:`negbench.strategies.kernels.in_batch_negatives`, which other strategies start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from negbench.strategies import Negatives, StepContext, Strategy, register
from negbench.strategies.kernels import in_batch_negatives


@dataclass(frozen=True)
class InBatchConfig:
    """In-batch has no knobs of its own: the batch size and temperature belong to the run."""

    space: ClassVar[dict] = {}


@register("in-batch")
class InBatch(Strategy):
    """SimCLR's in-batch negatives (2B-2 per anchor)."""

    Config = InBatchConfig
    cfg: InBatchConfig
    paper = "Chen et al. 2020, SimCLR"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        return in_batch_negatives(q, k, ctx.ids)
