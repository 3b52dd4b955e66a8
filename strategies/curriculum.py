"""A curriculum of negatives: a window on each anchor's similarity ranking that slides from the
easy end to the hard end as the budget is spent.

Wu, Mosse, Zhuang, Yamins, Goodman. "Conditional Negative Sampling for Contrastive Learning of
Visual Representations" (CNCE), ICLR 2021: negatives are drawn from a "ring" around the anchor,
the candidates whose similarity to it lies between two percentiles, and the ring is annealed
toward harder negatives during training. Optional weights after Robinson, Chuang, Sra, Jegelka,
"Contrastive Learning with Hard Negative Samples" (HCL), ICLR 2021.

Here, for each anchor of the symmetric in-batch selection (SimCLR's 2B anchors and 2B-2
negatives each, :func:`negbench.strategies.kernels.in_batch_negatives`):

- the window on n ranked candidates: m = clamp(ceil(width * n), 1, n) consecutive ranks from
  rank lo = round(p * (n - m)), halves rounded up, to hi = lo + m (exclusive), rank 0 the least
  similar (easiest): p = 0 is the m easiest, p = 1 the m hardest;
- the position p moves from ``p_start`` to ``p_end`` as a function of the budget fraction f
  (``ctx.fraction``, clipped to [0, 1]): p = p_start + (p_end - p_start) * S(f), with the
  schedule S linear (f), cosine ((1 - cos(pi f)) / 2) or step (floor(f * stages) / (stages - 1),
  capped at 1: ``stages`` equal plateaus, the last reached at f = (stages-1)/stages).
  ``p_start = p_end = 1`` is the hardest fixed setting, ``p_start = p_end = 0`` the easiest;
- ``ranking="exact"``: the anchor's n negatives are ranked by cosine similarity, ties broken by
  pool row, and the window is ranks [lo, hi) of that ranking. It sorts every (A, P) row: the
  slow reference, O(A P log P).
- ``ranking="sample"`` (the default): the window's two rank bounds become similarity
  thresholds read from a sample of each row. S = ``rank_sample`` (64) distinct pool columns are
  drawn with ``ctx.generator`` (one ``torch.randperm(P)[:S]`` per step, shared by every anchor;
  all P columns, and no draw, when P <= S). For each anchor, its similarities to those columns,
  with its invalid candidates (those holding its own instance) set to +inf, are sorted
  ascending, v_0 <= v_1 <= ...; n_s is the number of its valid sampled candidates; the window
  rule above on n = n_s gives (lo_s, hi_s), and the thresholds are t_lo = v_{lo_s} (-inf when
  lo_s <= 0) and t_hi = v_{hi_s} (+inf when hi_s >= n_s). The anchor's window is then every
  valid candidate of the whole row with t_lo <= s < t_hi: O(A P) compares and an (A, S) sort,
  no sort of P. So p = 0 always includes the easiest negative and p = 1 the hardest, and with
  P <= S (a small batch) the window is the exact one up to ties (equal similarities at a bound
  are all in or all out). An anchor without a valid sampled candidate (n_s = 0) keeps all its
  negatives.
- with ``beta_max > 0``, HCL-style importance weights w = exp(beta * s / tau) over the selected
  negatives, normalised to mean 1 per anchor
  (:func:`negbench.strategies.kernels.importance_weights`), with beta = beta_max * p annealed
  with the window (tau = ``ctx.temperature``, the objective's temperature).

The similarities are computed once, with their gradients, and handed to the objective
(``Negatives.sim``); the selection and the weights use a detached copy. The fractions width, p
and S(f) are host floats; to keep the window sync-free and reproducible on any device, they are
quantised to multiples of 2^-20 and the bounds computed in exact integer arithmetic on the
per-anchor counts.

NOTE: CNCE samples from a ring between a lower and an upper percentile and anneals the lower one
upward (the ring narrows toward the hard end); here a window of fixed width slides from the easy
end to the hard end, over the batch only (no memory bank), and every negative in it is used.
NOTE: with ``ranking="sample"`` (the default) the window holds about width x n negatives, not
exactly: its bounds are sample quantiles. For an anchor with n_s valid sampled columns and m_s =
hi_s - lo_s, the share of its row inside the window has mean about m_s / (n_s + 1) ((m_s + 1) /
(n_s + 1) when the window starts at the easy end, whose -inf bound also takes the spacing below
the smallest sample) and a sampling error of sd about sqrt(q (1 - q) / S) for a window of share q
(0.06 for q = 0.5 and S = 64, 0.04 for q = 0.1); the anchors' windows differ in size by that
much. The tests check these figures. The realised share at the last step is logged as
``curriculum_selected``. ``ranking="exact"`` gives exactly m negatives, at the price of a full
sort of every row (several times the cost of the objective).
NOTE: ``rank_sample`` defaults to 64, not more: torch's CPU sort is costly per element even on
short rows, so the (A, S) sort weighs on the step as S grows. A larger S narrows the error as
1/sqrt(S), at that cost.
NOTE: HCL's weights carry gradients in its reference code; here they are computed from detached
similarities (constants in the loss), and beta follows the window's position p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Choice,
    Float,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from negbench.strategies.kernels import importance_weights, in_batch_negatives, ordered_bits

SCHEDULES = ("linear", "cosine", "step")
RANKINGS = ("sample", "exact")
Q = 1 << 20  # fractions are quantised to multiples of 1/Q


@dataclass(frozen=True)
class CurriculumConfig:
    width: float = 0.5  # fraction of each anchor's negatives in the window
    schedule: str = "linear"  # linear | cosine | step: how the window moves with the fraction f
    stages: int = 4  # plateaus of the step schedule
    p_start: float = 0.0  # window position at f = 0 (0: easiest end, 1: hardest end)
    p_end: float = 1.0  # window position at f = 1
    beta_max: float = 0.0  # HCL concentration at p = 1 (0: no weights)
    ranking: str = "sample"  # sample: thresholds from S sampled columns | exact: full sort
    rank_sample: int = 64  # S: pool columns sampled per step for the thresholds

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
        if self.ranking not in RANKINGS:
            raise StrategyError(f"curriculum: ranking must be one of {', '.join(RANKINGS)}; "
                                f"got {self.ranking!r}")
        if not (isinstance(self.rank_sample, int) and self.rank_sample >= 1):
            raise StrategyError(f"curriculum: rank_sample must be an integer >= 1, "
                                f"got {self.rank_sample!r}")


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


def window_bounds(n: Tensor, wq: int, pq: int) -> tuple[Tensor, Tensor]:
    """(lo, hi): the window's ranks [lo, hi) among ``n`` (int64) ranked candidates, for width
    wq / Q and position pq / Q: m = clamp(ceil(width n), 1, n), lo = round(p (n - m)), halves
    up, hi = lo + m. Exact integer arithmetic (floor division)."""
    m = torch.minimum((wq * n + Q - 1) // Q, n).clamp_min(1)  # ceil(width * n)
    lo = (pq * (n - m) + Q // 2) // Q  # round(p * (n - m))
    return lo, lo + m


def window_mask(sim: Tensor, valid: Tensor, width: float, p: float) -> Tensor:
    """(A, P) bool, ``ranking="exact"``: each anchor's window of ranks among its ``valid``
    candidates, by a full sort of each row.

    ``sim`` (A, P) similarities, ``valid`` (A, P) bool; see the module docstring for the rule."""
    a, pool = sim.shape
    key = sim.masked_fill(~valid, float("inf"))  # (A, P) invalid candidates rank last
    order = torch.argsort(key, dim=1, stable=True)  # (A, P) least similar first
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(pool, device=sim.device).expand(a, pool))  # (A, P)
    n = valid.sum(1, keepdim=True, dtype=torch.int32).long()  # (A, 1) negatives per anchor
    lo, hi = window_bounds(n, quantise(width), quantise(p))  # (A, 1) each
    return valid & (ranks >= lo) & (ranks < hi)  # (A, P)


def sample_columns(pool: int, s: int, generator: torch.Generator,
                   device: torch.device) -> Tensor | None:
    """(S,) distinct pool columns drawn with ``generator``, or None (all columns) when P <= S."""
    if pool <= s:
        return None
    return torch.randperm(pool, generator=generator, device=device)[:s]  # (S,)


def sort_rows(bits: Tensor) -> Tensor:
    """Each row of the integer keys ``bits`` (A, S) sorted; int32 keys by ONE sort of a flat
    int64 array: row r's keys become r * 2^32 + (key + 2^31), which orders rows first and keys
    within a row. On CPUs that is faster than torch's per-row sort of short rows, whose cost is
    mostly per row."""
    if bits.dtype != torch.int32:  # float64/float16 similarities: the plain per-row sort
        return bits.sort(dim=1).values
    a, s = bits.shape
    rows = torch.arange(a, device=bits.device, dtype=torch.int64)[:, None] << 32  # (A, 1)
    flat = (rows + (bits.to(torch.int64) + (1 << 31))).reshape(-1).sort().values  # (A S,)
    return ((flat & 0xFFFFFFFF) - (1 << 31)).to(torch.int32).view(a, s)  # (A, S)


def sampled_window_mask(sim: Tensor, valid: Tensor, width: float, p: float,
                        cols: Tensor | None, valid_s: Tensor | None = None) -> Tensor:
    """(A, P) bool, ``ranking="sample"``: each anchor's window as similarity thresholds read
    from its similarities to the sampled pool columns ``cols`` (S,) (None: all columns).

    ``sim`` (A, P) similarities (detached), ``valid`` (A, P) bool; ``valid_s`` (A, S), when
    given, is ``valid``'s sampled columns, made more cheaply by the caller (a bool
    ``index_select`` along dim 1 is slow on CPUs). See the module
    docstring for the rule. A bound that is -inf (+inf) for every anchor, which the host knows
    from p and the width alone, is not compared at all."""
    wq, pq = quantise(width), quantise(p)
    need_lo = 0 < pq and wq < Q  # else lo_s <= 0 for every anchor: t_lo = -inf
    need_hi = pq < Q and wq < Q  # else hi_s = n_s for every anchor: t_hi = +inf
    if not (need_lo or need_hi):
        return valid
    inf = float("inf")
    ks = sim if cols is None else sim.index_select(1, cols)  # (A, S)
    if valid_s is None:
        valid_s = valid if cols is None else valid.index_select(1, cols)
    vs = valid_s  # (A, S)
    s = ks.shape[1]
    v = sort_rows(ordered_bits(torch.where(vs, ks, inf)))  # (A, S) invalid ones last
    n_s = vs.sum(1, keepdim=True)  # (A, 1) valid sampled candidates
    lo, hi = window_bounds(n_s, wq, pq)  # (A, 1) each
    sel = valid
    if need_lo:
        t_lo = ordered_bits(v.gather(1, lo.clamp(0, s - 1))).view(sim.dtype)  # (A, 1) v[lo]
        t_lo = torch.where(lo > 0, t_lo, -inf)  # (A, 1)
        sel = torch.ge(sim, t_lo).logical_and_(sel)  # (A, P)
    if need_hi:
        t_hi = ordered_bits(v.gather(1, hi.clamp(0, s - 1))).view(sim.dtype)  # (A, 1) v[hi]
        t_hi = torch.where(hi < n_s, t_hi, inf)  # (A, 1)
        sel = torch.lt(sim, t_hi).logical_and_(sel)  # (A, P)
    return sel


def selected_fraction(sel: Tensor, anchor_ids: Tensor, pool_ids: Tensor) -> float:
    """The fraction of each anchor's negatives in its window, averaged over anchors (a sync)."""
    n = (anchor_ids[:, None] != pool_ids[None, :]).sum(1)  # (A,) negatives per anchor
    got = sel.sum(1)  # (A,)
    return float((got / n.clamp_min(1)).mean())


@register("curriculum")
class Curriculum(Strategy):
    """A window on each anchor's in-batch similarity ranking, moving from easy to hard."""

    Config = CurriculumConfig
    cfg: CurriculumConfig
    paper = "Wu et al. 2021, Conditional Negative Sampling (ring); Robinson et al. 2021 (HCL beta)"

    def __init__(self, cfg: CurriculumConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.last_fraction = 0.0  # host float: the fraction seen by the last select()
        # the last step's window and ids, read (with a sync) only by extra_metrics
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def position(self, fraction: float) -> float:
        """p(f): the window's position, 0 at the easy end and 1 at the hard end."""
        c = self.cfg
        return c.p_start + (c.p_end - c.p_start) * schedule(c.schedule, fraction, c.stages)

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        self.last_fraction = float(ctx.fraction)
        p = self.position(ctx.fraction)
        negs = in_batch_negatives(q, k, ctx.ids)
        n = negs.pool_size
        # one product serves the window, the weights and, with its gradients, the objective;
        # the objective's FLOPs count it, so it is not charged as mining
        negs.sim = negs.anchors @ negs.pool.T  # (A, P)
        with torch.no_grad():
            sim = negs.sim.detach()  # (A, P)
            if cfg.ranking == "exact":
                sel = window_mask(sim, negs.mask, cfg.width, p)  # (A, P)
            else:
                cols = sample_columns(n, cfg.rank_sample, ctx.generator, q.device)  # (S,)
                vs = None if cols is None else (  # (A, S) the mask's sampled columns, from ids
                    negs.anchor_ids[:, None] != negs.pool_ids.index_select(0, cols)[None, :])
                sel = sampled_window_mask(sim, negs.mask, cfg.width, p, cols, vs)  # (A, P)
            negs.mask = sel
            if cfg.beta_max > 0.0:
                negs.weights = importance_weights(sim, sel, cfg.beta_max * p,
                                                  ctx.temperature)  # (A, P) mean 1
        self._last = (sel, negs.anchor_ids, negs.pool_ids)
        return negs

    def extra_metrics(self) -> dict[str, float]:
        p = self.position(self.last_fraction)
        lo = p * (1.0 - self.cfg.width)
        out = {"curriculum_window_lo": lo, "curriculum_window_hi": lo + self.cfg.width}
        if self.cfg.beta_max > 0.0:
            out["curriculum_beta"] = self.cfg.beta_max * p
        if self._last is not None and self._last[0].device.type != "meta":
            out["curriculum_selected"] = selected_fraction(*self._last)
        return out
