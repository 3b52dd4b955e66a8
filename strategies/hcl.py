"""Hard negatives by importance weighting, with the debiased estimator (HCL).

Robinson, Chuang, Sra, Jegelka. "Contrastive Learning with Hard Negative Samples", ICLR 2021.
Negatives are drawn, in expectation, from q_beta(x-) proportional to e^{beta f(x)^T f(x-)} times
the data distribution, and the true-positive share tau+ of that sample is removed with the
debiased estimator of Chuang et al. 2020. In a batch both are importance weights on the ordinary
in-batch negatives (SimCLR's 2B-2 per anchor, both views as anchors):

    w_n = e^{beta s_n / tau} / mean_m e^{beta s_m / tau}     (mean 1 over the anchor's negatives)
    N_g = max( (sum_n w_n e^{s_n/tau} - tau+ N e^{s_p/tau}) / (1 - tau+),  N e^{-1/tau} )
    loss = -log( e^{s_p/tau} / (e^{s_p/tau} + N_g) )

with s the cosine similarity, tau the objective's temperature (``ctx.temperature``) and N = 2B-2.
This strategy returns the weights and tau+; the objective (``harness.objectives.info_nce``)
computes N_g and the loss. With beta = 0 and tau+ = 0 it is exactly in-batch InfoNCE.

Gradients: the authors' code (``image/main.py``, ``imp = (beta * neg.log()).exp()``) does not
detach the importance weights, so by default the loss is differentiated through w as well, which
gives the paper code's gradient exactly. ``detach_weights=True`` treats q_beta as a fixed
sampling distribution instead (same loss value, no gradient through w).

NOTE: under the triplet objective tau+ is ignored (the objective applies it only to InfoNCE) and
the weights are the triplet's per-pair weights; the paper defines HCL for InfoNCE only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from negbench.strategies import Float, Negatives, StepContext, Strategy, StrategyError, register
from negbench.strategies.kernels import in_batch_negatives


@dataclass(frozen=True)
class HCLConfig:
    beta: float = 1.0  # concentration of q_beta on hard negatives (0: uniform)
    tau_plus: float = 0.1  # class prior tau+ of the debiased estimator (0: none)
    detach_weights: bool = False  # True: no gradient through w (the authors' code has one)

    space: ClassVar[dict] = {"beta": Float(0.0, 2.0), "tau_plus": Float(0.0, 0.2)}

    def __post_init__(self):
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise StrategyError(f"hcl: beta must be a finite number >= 0, got {self.beta}")
        if not 0.0 <= self.tau_plus < 1.0:
            raise StrategyError(f"hcl: tau_plus must lie in [0, 1), got {self.tau_plus}")


@register("hcl")
class HCL(Strategy):
    """In-batch negatives importance-weighted towards the hard ones, with tau+ debiasing."""

    Config = HCLConfig
    cfg: HCLConfig
    paper = "Robinson et al. 2021, Contrastive Learning with Hard Negative Samples (HCL)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        negs = in_batch_negatives(q, k, ctx.ids)
        # one product, with its gradients, serves the weights and the objective (negs.sim); the
        # objective's FLOPs count it, so it is not charged as mining
        sim = negs.anchors @ negs.pool.T  # (A, P) cosine similarities
        # the weights as a tilt the objective applies itself: no (A, P) weight tensor
        return dataclasses.replace(negs, tilt=self.cfg.beta / ctx.temperature,
                                   tilt_grad=not self.cfg.detach_weights,
                                   tau_plus=self.cfg.tau_plus, sim=sim)
