"""Supervised contrastive learning: same-class items as positives. An oracle reference.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. "Supervised Contrastive
Learning", NeurIPS 2020, the loss L_out (their eq. 2): with both views of the batch as anchors
(2B of them), A(i) every view but anchor i, and P(i) those of A(i) with i's label,

    L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / D_i ),
    D_i = sum_{a in A(i)} exp(z_i.z_a / tau)

Here the anchor's other view is its positive (``positives``), the other same-class views are
``extra_positives`` and the other-class views the selection (``mask``): the objective sums the
denominator over all three and averages the log-probabilities over the first two. It reads
labels (``oracle = True``), so it is a bound, never ranked or named a winner.

NOTE: the authors' code multiplies the loss by tau / base_tau (0.07 / 0.07 = 1 at their
defaults); negbench's objective temperature is the run's, and no such factor is applied.
NOTE: the meters see only the other-class candidates, the negatives, so its FNR is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from negbench.strategies import Negatives, StepContext, Strategy, register
from negbench.strategies.kernels import in_batch_same_class


@dataclass(frozen=True)
class SupConConfig:
    """No knobs of its own: the batch and temperature belong to the run."""

    space: ClassVar[dict] = {}


@register("supcon")
class SupCon(Strategy):
    """Same-class views as positives, other-class views as negatives (oracle labels)."""

    Config = SupConConfig
    cfg: SupConConfig
    paper = "Khosla et al. 2020, SupCon"
    oracle = True

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs, same = in_batch_same_class(q, k, ctx, self.name)  # (2B, 2B) same
        negs.extra_positives = negs.mask & same  # other views of the anchor's class
        negs.mask &= ~same  # the negatives: other classes only
        return negs
