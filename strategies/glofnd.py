"""GloFND: global false-negative discovery with a learned threshold per item.

Balmaseda, Wang, Lin, Yang. "Discovering Global False Negatives On the Fly for Self-supervised
Contrastive Learning", ICML 2025. Each training item i keeps a threshold lambda_i, learned
online as the (1 - alpha) quantile of its similarities to its negatives: the pinball objective
F(lambda) = alpha lambda + mean_j (s_ij - lambda)_+ has the stochastic (sub)gradient

    g_i = alpha - (1 / (2 n)) sum over i's two views v, sum over its n in-batch negatives j of
          1[s^v_ij > lambda_i]

and lambda_i takes one Adam step on it each time i is in a batch. A candidate with s_ij >
lambda_i is taken for a false negative and removed from the anchor's denominator (elimination).
The state is O(N): a threshold and two Adam moments per item, whatever the dataset's size.

Verified against the authors' code (vibalcam/GloFND, ``unimodal/sogclr/fnd.py`` and
``builder.py``): lambda starts at 1.0; Adam with beta1 0.9, beta2 0.98, eps 1e-8, bias correction
by the epoch count, lambda clamped to [-1, 1]; s_ij the cosine of the projections (not divided by
tau); the negatives of i are both views of every other item of the batch; alpha = 0.01 and
lr = 0.05 (their README and ImageNet-100 scripts); updates and masking start at epoch 70 of 200.

NOTE: the authors pair GloFND with SogCLR's global contrastive loss; here it runs on the
harness's objective (InfoNCE), like their ``cl`` path.
NOTE: the start is a fraction of the budget (``start = 0.35``: epoch 70 of 200); before it the
strategy is plain in-batch and lambda is not updated.
NOTE: their plain InfoNCE path rescales the kept negatives' sum to the full count, (sum over
kept / n_kept) * n; here the kept sum is used as it is. With alpha = 0.01 about 1% of the
candidates are removed, so the factor is within about alpha of 1, and leaving it out keeps the
step unweighted (the weights cost a pass of their own and the objective's weighted path).
NOTE: lambda is updated with this step's similarities inside ``mine``, after the mask has been
taken with the thresholds as they stood (the same similarities the authors' step uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from negbench.strategies import (
    Float,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)
from negbench.strategies.kernels import in_batch_negatives

BETA1, BETA2, EPS = 0.9, 0.98, 1e-8


@dataclass(frozen=True)
class GloFNDConfig:
    alpha: float = 0.01  # lambda_i is the (1 - alpha) quantile of i's negative similarities
    lr: float = 0.05  # Adam's step size for lambda
    start: float = 0.35  # fraction of the budget before which nothing is masked or learned

    space: ClassVar[dict] = {
        "alpha": Float(0.001, 0.1, log=True),
        "lr": Float(0.005, 0.5, log=True),
        "start": Float(0.0, 0.7),
    }

    def __post_init__(self):
        if not 0.0 < self.alpha < 1.0:
            raise StrategyError(f"glofnd: alpha must lie in (0, 1), got {self.alpha}")
        if not self.lr > 0:
            raise StrategyError(f"glofnd: lr must be > 0, got {self.lr}")
        if not 0.0 <= self.start < 1.0:
            raise StrategyError(f"glofnd: start must lie in [0, 1), got {self.start}")


def glofnd_step(s: Tensor, valid: Tensor, lam: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """For a symmetric in-batch selection (rows b and b + B are item b's two views): the kept
    candidates (2B, 2B) bool, s <= lambda of the row's item, and the pinball gradient (B,) of
    each item's lambda ``lam`` (B,)."""
    b = lam.shape[0]
    lam2 = torch.cat([lam, lam])[:, None]  # (2B, 1)
    above = (s > lam2) & valid  # (2B, 2B) the candidates taken for false negatives
    n = valid.sum(1, dtype=s.dtype).clamp_min(1.0)  # (2B,) negatives of each row
    frac = above.sum(1, dtype=s.dtype) / n  # (2B,)
    grad = alpha - 0.5 * (frac[:b] + frac[b:])  # (B,)
    return valid & ~above, grad


@register("glofnd")
class GloFND(Strategy):
    """In-batch negatives less those above the anchor's learned (1 - alpha) quantile."""

    Config = GloFNDConfig
    cfg: GloFNDConfig
    paper = "Balmaseda et al. 2025, GloFND (global false-negative discovery), ICML"

    def __init__(self, cfg: GloFNDConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        self.register_buffer("lam", torch.ones(n_train))  # (N,) thresholds, start at 1
        self.register_buffer("m", torch.zeros(n_train))  # (N,) Adam's first moment
        self.register_buffer("v", torch.zeros(n_train))  # (N,) Adam's second moment

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        cfg = self.cfg
        negs = in_batch_negatives(q, k, ctx.ids)
        if ctx.fraction < cfg.start:
            return negs
        negs.sim = negs.anchors @ negs.pool.T  # (A, P), reused by the objective
        with torch.no_grad():
            s = negs.sim.detach()
            ids = ctx.ids
            lam = self.lam[ids]  # (B,)
            keep, g = glofnd_step(s, negs.mask, lam.to(s.dtype), cfg.alpha)
            negs.mask = keep
            # one Adam step on each item's lambda; bias correction by the epoch, as the
            # authors' code (a host count: steps and batch size are known on the host)
            epoch = ctx.step * q.shape[0] // max(ctx.n_train, 1)
            m = self.m[ids] * BETA1 + g.float() * (1 - BETA1)  # (B,)
            v = self.v[ids] * BETA2 + g.float().square() * (1 - BETA2)  # (B,)
            m_hat = m / (1 - BETA1 ** (epoch + 1))
            v_hat = v / (1 - BETA2 ** (epoch + 1))
            new = (lam - cfg.lr * m_hat / (v_hat.sqrt() + EPS)).clamp_(-1.0, 1.0)
            self.m.index_copy_(0, ids, m)
            self.v.index_copy_(0, ids, v)
            self.lam.index_copy_(0, ids, new)
        return negs

    def extra_metrics(self) -> dict[str, float]:
        """The mean threshold over the training items (1.0 until the start)."""
        return {"glofnd_lambda_mean": float(self.lam.mean())}
