"""A curriculum of negatives: a window on each anchor's similarity ranking that slides from the
easy end to the hard end as the budget is spent.

Wu, Mosse, Zhuang, Yamins, Goodman. "Conditional Negative Sampling for Contrastive Learning of
Visual Representations" (CNCE), ICLR 2021: negatives are drawn from a "ring" around the anchor,
the candidates whose similarity to it lies between two percentiles, and the ring is annealed
toward harder negatives during training. Optional weights after Robinson, Chuang, Sra, Jegelka,
"Contrastive Learning with Hard Negative Samples" (HCL), ICLR 2021.

Here, for each anchor of the symmetric in-batch selection (SimCLR's 2B anchors and 2B-2
negatives each, :func:`strategies.in_batch.in_batch_negatives`):

- its n negatives are ranked by cosine similarity, rank 0 the least similar (easiest), ties
  broken by pool row;
- a window of m = clamp(ceil(width * n), 1, n) consecutive ranks is selected, starting at
  rank lo = round(p * (n - m)), halves rounded up: p = 0 is the m easiest, p = 1 the m hardest;
- the position p moves from ``p_start`` to ``p_end`` as a function of the budget fraction f
  (``ctx.fraction``, clipped to [0, 1]): p = p_start + (p_end - p_start) * S(f), with the
  schedule S linear (f), cosine ((1 - cos(pi f)) / 2) or step (floor(f * stages) / (stages - 1),
  capped at 1: ``stages`` equal plateaus, the last reached at f = (stages-1)/stages).
  ``p_start = p_end = 1`` is the hardest fixed setting, ``p_start = p_end = 0`` the easiest;
- with ``beta_max > 0``, HCL-style importance weights w = exp(beta * s / tau) over the selected
  negatives, normalised to mean 1 per anchor, with beta = beta_max * p annealed with the window
  (tau = ``ctx.temperature``, the objective's temperature).

The fractions width, p and S(f) are host floats; to keep the window sync-free and reproducible
on any device, they are quantised to multiples of 2^-20 and the bounds computed in exact integer
arithmetic on the per-anchor counts.

NOTE: CNCE samples from a ring between a lower and an upper percentile and anneals the lower one
upward (the ring narrows toward the hard end); here a window of fixed width slides from the easy
end to the hard end, over the batch only (no memory bank), and every negative in it is used.
NOTE: HCL's weights carry gradients in its reference code; here they are computed from detached
similarities (constants in the loss), and beta follows the window's position p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from strategies import (
    Choice,
    Float,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from strategies.in_batch import in_batch_negatives

SCHEDULES = ("linear", "cosine", "step")
Q = 1 << 20  # fractions are quantised to multiples of 1/Q


@dataclass(frozen=True)
class CurriculumConfig:
    width: float = 0.5  # fraction of each anchor's negatives in the window
    schedule: str = "linear"  # linear | cosine | step: how the window moves with the fraction f
    stages: int = 4  # plateaus of the step schedule
    p_start: float = 0.0  # window position at f = 0 (0: easiest end, 1: hardest end)
    p_end: float = 1.0  # window position at f = 1
    beta_max: float = 0.0  # HCL concentration at p = 1 (0: no weights)

    space: ClassVar[dict] = {
        "width": Float(0.05, 1.0),
        "schedule": Choice(SCHEDULES),
        "beta_max": Float(0.0, 2.0),
    }

    def __post_init__(self):
        if not 0.0 < self.width <= 1.0:
            raise StrategyError(f"curriculum: width must lie in (0, 1], got {self.width}")
        if self.schedule not in SCHEDULES:
            raise StrategyError(f"curriculum: schedule must be one of {', '.join(SCHEDULES)}; "
                                f"got {self.schedule!r}")
        if self.stages < 2:
            raise StrategyError(f"curriculum: stages must be >= 2, got {self.stages}")
        for name in ("p_start", "p_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise StrategyError(f"curriculum: {name} must lie in [0, 1], got {v}")
        if not (self.beta_max >= 0.0 and math.isfinite(self.beta_max)):
            raise StrategyError(f"curriculum: beta_max must be >= 0, got {self.beta_max}")


def schedule(name: str, f: float, stages: int) -> float:
    """S(f) in [0, 1], with S(0) = 0 and S(1) = 1."""
    f = min(1.0, max(0.0, f))
    if name == "linear":
        return f
    if name == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * f))
    return min(1.0, math.floor(f * stages) / (stages - 1))


def quantise(x: float) -> int:
    """x in [0, 1] as an integer multiple of 1/Q."""
    return int(round(x * Q))


def window_mask(sim: Tensor, valid: Tensor, width: float, p: float) -> Tensor:
    """(A, P) bool: each anchor's window of ranks among its ``valid`` candidates.

    ``sim`` (A, P) similarities, ``valid`` (A, P) bool; see the module docstring for the rule."""
    a, pool = sim.shape
    key = sim.masked_fill(~valid, float("inf"))  # (A, P) invalid candidates rank last
    order = torch.argsort(key, dim=1, stable=True)  # (A, P) least similar first
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(pool, device=sim.device).expand(a, pool))  # (A, P)
    n = valid.sum(1, keepdim=True)  # (A, 1) negatives per anchor
    wq, pq = quantise(width), quantise(p)
    m = torch.minimum((wq * n + Q - 1) // Q, n).clamp_min(1)  # (A, 1) ceil(width * n)
    lo = (pq * (n - m) + Q // 2) // Q  # (A, 1) round(p * (n - m))
    return valid & (ranks >= lo) & (ranks < lo + m)  # (A, P)


@register("curriculum")
class Curriculum(Strategy):
    """A window on each anchor's in-batch similarity ranking, moving from easy to hard."""

    Config = CurriculumConfig
    paper = "Wu et al. 2021, Conditional Negative Sampling (ring); Robinson et al. 2021 (HCL beta)"

    def __init__(self, cfg: CurriculumConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.last_fraction = 0.0  # host float: the fraction seen by the last select()

    def position(self, fraction: float) -> float:
        """p(f): the window's position, 0 at the easy end and 1 at the hard end."""
        c = self.cfg
        return c.p_start + (c.p_end - c.p_start) * schedule(c.schedule, fraction, c.stages)

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        self.last_fraction = float(ctx.fraction)
        p = self.position(ctx.fraction)
        negs = in_batch_negatives(q, k, ctx.ids)
        a, n, d = negs.num_anchors, negs.pool_size, q.shape[1]
        ctx.charge_mining(a * n * d)
        with torch.no_grad():
            sim = negs.anchors @ negs.pool.T  # (A, P)
            sel = window_mask(sim, negs.mask, cfg.width, p)  # (A, P)
            negs.mask = sel
            if cfg.beta_max > 0.0:
                beta = cfg.beta_max * p
                logit = ((beta / ctx.temperature) * sim).masked_fill(~sel, float("-inf"))  # (A, P)
                top = torch.nan_to_num(logit.amax(1, keepdim=True), neginf=0.0)  # (A, 1)
                e = torch.exp(logit - top)  # (A, P), 0 outside the window
                cnt = sel.sum(1, keepdim=True).to(e.dtype)  # (A, 1)
                negs.weights = e * cnt / e.sum(1, keepdim=True).clamp_min(1e-30)  # (A, P) mean 1
        return negs

    def extra_metrics(self) -> dict[str, float]:
        p = self.position(self.last_fraction)
        lo = p * (1.0 - self.cfg.width)
        out = {"curriculum_window_lo": lo, "curriculum_window_hi": lo + self.cfg.width}
        if self.cfg.beta_max > 0.0:
            out["curriculum_beta"] = self.cfg.beta_max * p
        return out
