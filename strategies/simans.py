"""SimANS: ambiguous negatives, sampled near the positive's score.

Zhou et al. "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval", EMNLP 2022
(industry track). Among the top-ranked candidates of a query, a negative is sampled with
probability

    p_n ∝ exp(-a (s_n - s_p - b)^2)

so the negatives scored about as high as the positive (ambiguous ones) are the likeliest, while
those far above it (likely false negatives) and far below it (easy ones) are rarely drawn. The
authors' code (microsoft/SimXNS, SimANS/: ``utils/util_wiki.py``) samples K = 15 negatives per
query without replacement from the retriever's top-k (k = 100 on NQ and TriviaQA, the positives
removed), with a = 0.5 and b = 0 (its argparse defaults; TriviaQA's script; NQ's sets b = 1).

Here: over each anchor's in-batch candidates (SimCLR's 2B - 2 views of other instances), the
``top_k`` most similar form the candidate set, and ``K`` of them are drawn without replacement
with those probabilities (Gumbel-top-K keys, one vectorised pass; the same draw as sequential
sampling without replacement). The selection is returned in index form, (A, K) pool rows with
their similarities gathered from the scoring product, so the objective works on K columns.
(Scoring the K columns again, with gradients, instead was slower on CPUs: the backward of a
gather of pool rows is an accumulating scatter, where the gathered (A, P) product's is two
matrix products.)

NOTE: SimANS's scores are inner products of a dense retriever's un-normalised embeddings, whose
gaps between candidates span several units; cosine similarities span [-1, 1]. So the distance is
taken on the objective's logits, (s_n - s_p) / tau (tau = ``ctx.temperature``), which puts the
published a = 0.5 on a comparable scale (a cosine gap of tau is one unit).
NOTE: the authors' code writes the square as (s_n - s_p + b)^2 (its b is the paper's -b); b = 0
by default, where the two agree. ``b`` here is the paper's.
NOTE: candidates come from the batch each step (no corpus index refreshed every 2,000 steps as
in the authors' AR2 co-training loop); an anchor with fewer than K candidates in its top-k uses
all of them.
NOTE: ``warmup`` (negbench's, 0 by default: the rule above from the first step) trains on every
in-batch negative until that fraction of the budget is spent. The authors start from a trained
retriever (AR2's warm-up), where the positive's score means something; an encoder trained from
scratch starts with every view alike, and the "ambiguous" band around a meaningless s_p is then
any candidate (see docs/decisions.md, "bbc-news: strategy defaults").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Float,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from negbench.strategies.kernels import in_batch_scored, ordered_bits


@dataclass(frozen=True)
class SimANSConfig:
    a: float = 0.5  # sharpness of the sampling around s_p + b (on logits)
    b: float = 0.0  # the peak's offset from the positive's score (on logits), the paper's sign
    top_k: int = 100  # the candidate set: each anchor's top_k most similar candidates
    K: int = 15  # negatives drawn per anchor, without replacement
    warmup: float = 0.0  # fraction of the budget trained on all in-batch negatives first

    space: ClassVar[dict] = {
        "a": Float(0.05, 5.0, log=True),
        "b": Float(-2.0, 2.0),
        "K": Int(4, 64, log=True),
        "warmup": Float(0.0, 0.5),
    }

    def __post_init__(self):
        if not self.a > 0:
            raise StrategyError(f"simans: a must be > 0, got {self.a}")
        if self.top_k < 1 or self.K < 1:
            raise StrategyError(f"simans: top_k and K must be >= 1, got {self.top_k}, {self.K}")
        if not 0.0 <= self.warmup < 1.0:
            raise StrategyError(f"simans: warmup (a fraction of the budget) must lie in [0, 1), "
                                f"got {self.warmup}")


def simans_draw(s: Tensor, s_pos: Tensor, valid: Tensor, cfg: SimANSConfig, tau: float,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """K of each anchor's ``top_k`` most similar ``valid`` candidates, drawn without
    replacement with p ∝ exp(-a (gap - b)^2): the K largest Gumbel-perturbed log
    probabilities, computed on the (A, top_k) candidate columns only. Returns the (A, K) pool
    columns drawn and (A, K) bool, False where an anchor had fewer than K candidates."""
    a_n, p = s.shape
    k_top = min(cfg.top_k, p)
    # the candidate set: the top_k valid by similarity (int32 keys: CPU top-k is faster on
    # them), invalid entries shifted below every valid one
    key = ordered_bits(torch.add(s, (~valid).to(s.dtype), alpha=-4.0))  # (A, P)
    cols = key.topk(k_top, dim=1, sorted=False).indices  # (A, k_top) a set: order unused
    sc = s.gather(1, cols)  # (A, k_top)
    ok = valid.gather(1, cols)  # (A, k_top) fewer valid than top_k: the rest are not candidates
    d = (sc - s_pos[:, None]) / tau - cfg.b  # (A, k_top) gap on logits
    logp = d.square_().mul_(-cfg.a)  # (A, k_top) log p up to a row constant
    u = torch.rand(sc.shape, generator=generator, device=s.device, dtype=s.dtype)
    gumbel = u.clamp_(1e-12, 1.0).log_().neg_().log_().neg_()  # -log(-log u)
    keys = logp.add_(gumbel).add_((~ok).to(s.dtype), alpha=-1e4)  # (A, k_top)
    pick = keys.topk(min(cfg.K, k_top), dim=1, sorted=False).indices  # (A, K)
    return cols.gather(1, pick), ok.gather(1, pick)  # (A, K) pool columns, their validity


@register("simans")
class SimANS(Strategy):
    """K in-batch negatives per anchor, drawn from its top-k with p ∝ exp(-a (gap - b)^2)."""

    Config = SimANSConfig
    cfg: SimANSConfig
    paper = "Zhou et al. 2022, SimANS (ambiguous negatives sampling)"

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        negs, s, s_pos = in_batch_scored(q, k, ctx.ids)
        if ctx.fraction < cfg.warmup:  # NOTE: every in-batch negative yet (module docstring)
            return negs
        with torch.no_grad():
            cols, ok = simans_draw(s, s_pos, negs.mask, cfg, ctx.temperature, ctx.generator)
        # the (A, P) product, forward and backward (the K gathered columns' gradient flows
        # through it), which the objective's count of K columns leaves out
        ctx.charge_mining(3 * s.numel() * q.shape[1])
        # index form: the objective works on the K drawn columns, not a mask over all of P
        negs.index, negs.mask, negs.sim = cols, ok, negs.sim.gather(1, cols)  # (A, K) each
        return negs
