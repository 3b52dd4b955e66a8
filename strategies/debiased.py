"""Debiased contrastive learning: InfoNCE corrected for false negatives by the class prior tau+.

Chuang, Robinson, Lin, Torralba, Jegelka. "Debiased Contrastive Learning", NeurIPS 2020.
In-batch negatives (SimCLR's 2B-2 per anchor, both views as anchors) are a sample of the data
distribution, of which a share tau+ has the anchor's (unknown) class. The debiased estimator
removes that share using the positive as a sample of the anchor's class:

    N_g = max( (sum_n e^{s_n/tau} - tau+ N e^{s_p/tau}) / (1 - tau+),  N e^{-1/tau} )
    loss = -log( e^{s_p/tau} / (e^{s_p/tau} + N_g) )

with N = 2B-2. This strategy selects the in-batch negatives and sets ``tau_plus``; the objective
(``harness.objectives.info_nce``) computes N_g. With tau+ = 0 it is exactly in-batch InfoNCE.

NOTE: the paper's estimator can use M positives per anchor; the harness has one positive per
anchor (its other view), so M = 1, as in the authors' image code. Under the triplet objective
tau+ is ignored (the objective applies it only to InfoNCE), which leaves plain in-batch triplets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from negbench.strategies import Float, Negatives, StepContext, Strategy, StrategyError, register
from negbench.strategies.kernels import in_batch_negatives


@dataclass(frozen=True)
class DebiasedConfig:
    tau_plus: float = 0.1  # class prior tau+ (0: plain InfoNCE)

    space: ClassVar[dict] = {"tau_plus": Float(0.0, 0.2)}

    def __post_init__(self):
        if not 0.0 <= self.tau_plus < 1.0:
            raise StrategyError(f"debiased: tau_plus must lie in [0, 1), got {self.tau_plus}")


@register("debiased")
class Debiased(Strategy):
    """In-batch negatives with the debiased estimator's class prior tau+."""

    Config = DebiasedConfig
    cfg: DebiasedConfig
    paper = "Chuang et al. 2020, Debiased Contrastive Learning"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs = in_batch_negatives(q, k, ctx.ids)
        return dataclasses.replace(negs, tau_plus=self.cfg.tau_plus)
