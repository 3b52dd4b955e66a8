"""Adversarial negatives: M learnable negative embeddings trained by gradient ascent.

Hu, Wang, Xiao, Chen, Liu. "AdCo: Adversarial Contrast for Efficient Learning of Unsupervised
Representations from Self-Trained Negative Adversaries", CVPR 2021. The pool is a set of M
learnable vectors n_1..n_M (used normalized), shared by every anchor. The encoder minimizes the
contrastive loss against them; the negatives maximize it (they chase the anchors), each with its
own learning rate lr_neg and temperature tau_neg:

    L(n) = (1/B) sum_i -log( e^{q_i.k_i/t} / (e^{q_i.k_i/t} + sum_j e^{q_i.n_j/t}) ),  t = tau_neg
    dL/dn_j = (1/(B t)) sum_i p_ij q_i,   p_ij = e^{q_i.n_j/t} / (that denominator)

(AdCo's closed form; q is detached, so the ascent never reaches the encoder). The strategy never
computes the training loss: :meth:`Adversarial.update` evaluates this gradient in closed form,
vectorised over (B, M), from the detached q and k the harness passes after the encoder's step.

Design:

- The negatives are an ``nn.Parameter`` ``W`` (M, D) with ``requires_grad=False`` whose rows
  are always unit vectors: drawn on the sphere, filled with normalized keys, and put back on the
  sphere after every ascent step. The pool :meth:`mine` returns is a detached copy of ``W``, so
  the encoder's ``loss.backward()`` neither reaches nor accumulates into ``W``: its only update
  is the ascent.
- ``n_j = W_j / ||W_j||`` is what the loss sees, so the gradient with respect to ``W_j`` is the
  one above projected onto the tangent of the sphere and divided by ``||W_j||`` = 1
  (:func:`ascent_gradient`).
- The step is heavy-ball SGD (velocity ``v``, momentum ``mu``) as in AdCo's optimizer for the
  negatives: ``v <- mu v + dL/dW``; ``W <- normalize(W + lr_neg v)``.
- Initialisation, as AdCo's (which fills its negatives with the keys of its first batches): the
  first updates copy this step's keys into the rows not yet filled (a counter ``filled``, on the
  device), B rows per step, until all M hold keys; only filled rows take ascent steps. Until its
  turn a row holds a random direction drawn from torch's global generator when the strategy is
  built (the harness seeds it with the run's seed first), so every row is a valid negative from
  the first step.
- False-negative accounting: a learned negative has no dataset id (``pool_ids`` = -1). By the
  rule of ``Negatives``, it counts the label of the nearest real training embedding available at
  that step: the query view of the current batch with the largest cosine similarity to it
  (``sources`` = that view's dataset id, weight 1), read off the (B, M) similarities the
  objective uses anyway. That view may be the anchor's own instance: the negative then counts as
  a false negative of that anchor (it sits on the anchor's own instance).
- Cost: ``mine`` computes the (B, M) similarities once, with the anchors' gradients, and hands
  them to the objective as ``Negatives.sim``; ``update`` reuses their detached copy for the
  ascent's logits when it is called with the same q (the harness's order: select, backward,
  optimizer step, update), so a step costs the three (B, M, D) products of a plain InfoNCE
  (forward, the anchors' gradient, the ascent's dL/dn) and nothing is charged as mining twice.

NOTE: the rows are re-normalized after every step (AdCo normalizes them only where they are used);
this keeps lr_neg's step size from shrinking as the norms grow, and AdCo's weight decay on the
negatives (1e-4) is left out (a decay of unit rows is undone by the re-normalization).
NOTE: AdCo fills its negatives during a separate warm-up pass over the data; here the filling
happens in the first training steps, inside the budget.
NOTE: AdCo trains with MoCo v2's momentum key encoder; here it is optional (``m``; default 0.99,
as memory-bank's, since the digits budgets are a few hundred steps, not AdCo's 0.999).
NOTE: M = 256 negatives by default, sized for the small suites (digits, B = 256; AdCo: 65536 on
ImageNet). lr_neg = 3 and tau_neg = 0.07 are AdCo's released defaults; with fewer negatives each
row takes a larger share of the softmax, so the same lr_neg moves a row further per step. On
digits (2 seeds) they gave kNN accuracy on par with in-batch and harder negatives (mean
similarity 0.06-0.08 against 0.02); tau_neg = 0.1 gave harder ones (0.17-0.19) and about 1 point
less kNN accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negbench.strategies import (
    Float,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
    register,
)


@dataclass(frozen=True)
class AdversarialConfig:
    M: int = 256  # number of learnable negatives
    lr_neg: float = 3.0  # learning rate of the negatives' ascent
    tau_neg: float = 0.07  # temperature of the negatives' InfoNCE
    mu: float = 0.9  # momentum of the negatives' SGD
    m: float | None = 0.99  # key-encoder momentum (None: keys from the trained encoder)

    space: ClassVar[dict] = {
        "M": Int(64, 4096, log=True),
        "lr_neg": Float(0.1, 30.0, log=True),
        "tau_neg": Float(0.02, 0.5, log=True),
    }

    def __post_init__(self):
        if self.M < 1:
            raise StrategyError(f"adversarial: M (number of negatives) must be >= 1, got {self.M}")
        if not (math.isfinite(self.lr_neg) and self.lr_neg > 0):
            raise StrategyError(f"adversarial: lr_neg must be a finite number > 0, "
                                f"got {self.lr_neg}")
        if not (math.isfinite(self.tau_neg) and self.tau_neg > 0):
            raise StrategyError(f"adversarial: tau_neg must be a finite number > 0, "
                                f"got {self.tau_neg}")
        if not 0.0 <= self.mu < 1.0:
            raise StrategyError(f"adversarial: mu (momentum of the negatives) must lie in "
                                f"[0, 1), got {self.mu}")
        if self.m is not None and not 0.0 <= self.m < 1.0:
            raise StrategyError(f"adversarial: m (key-encoder momentum) must lie in [0, 1) or "
                                f"be None, got {self.m}")


def ascent_gradient(w: Tensor, q: Tensor, k: Tensor, tau: float,
                    qn: Tensor | None = None) -> Tensor:
    """(M, D) gradient with respect to ``w`` of the InfoNCE loss at temperature ``tau``, averaged
    over the B anchors q (positives k), whose negatives are the rows of ``w`` normalized, at a
    ``w`` whose rows are unit vectors (the strategy keeps them there): then n = w and
    ||w_j|| = 1, so the gradient is dL/dn projected onto the sphere's tangent at n. ``qn``
    (B, M), when given, is ``q @ w.T`` already computed."""
    s_pos = (q * k).sum(1, keepdim=True)  # (B, 1)
    s_neg = q @ w.T if qn is None else qn  # (B, M)
    p = torch.softmax(torch.cat([s_pos, s_neg], dim=1).mul_(1.0 / tau), dim=1)[:, 1:]  # (B, M)
    g = p.T @ q  # (M, D) dL/dn times B tau
    g.addcmul_((g * w).sum(1, keepdim=True), w, value=-1.0)  # (M, D) the tangent part
    return g.mul_(1.0 / (q.shape[0] * tau))  # (M, D)


@register("adversarial")
class Adversarial(Strategy):
    """AdCo's M learnable negatives, ascended on InfoNCE at tau_neg in ``update``."""

    Config = AdversarialConfig
    cfg: AdversarialConfig
    paper = "Hu et al. 2021, AdCo"

    def __init__(self, cfg: AdversarialConfig, *, dim: int, n_train: int):
        super().__init__(cfg, dim=dim, n_train=n_train)
        w = F.normalize(torch.randn(cfg.M, dim), dim=1)  # (M, D) uniform on the sphere
        self.W = nn.Parameter(w, requires_grad=False)  # (M, D)
        self.register_buffer("velocity", torch.zeros(cfg.M, dim))  # (M, D)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows holding keys
        self._qn = None  # (q, q's version, (B, M) similarities) from the last mine()
        # a host mirror of ``filled``: it depends only on how many keys update() has seen, so
        # the steady state (every row filled) takes the short path with no device read
        self._filled_host = 0
        self._const: dict = {}  # per (B, dtype, device): the step's constant tensors

    def _constants(self, b: int, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pool_ids, mask, source_weights) for a batch of ``b``: the same every step."""
        key = (b, q.dtype, q.device)
        if key not in self._const:
            m = self.cfg.M
            self._const = {key: (
                torch.full((m,), -1, dtype=torch.long, device=q.device),  # (M,)
                torch.ones(b, m, dtype=torch.bool, device=q.device),  # (B, M)
                torch.ones(m, 1, dtype=q.dtype, device=q.device),  # (M, 1)
            )}
        return self._const[key]

    @property
    def key_momentum(self) -> float | None:
        return self.cfg.m

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        # (M, D) a copy: W's rows are unit vectors already (update() puts them back on the sphere)
        pool = self.W.detach().to(q.dtype, copy=True)
        b = q.shape[0]
        pool_ids, mask, source_weights = self._constants(b, q)
        sim = q @ pool.T  # (B, M) the objective's similarities (negs.sim), with q's gradients
        sd = sim.detach()  # (B, M)
        # (M,) the query view closest to each negative (max's indices: faster than argmax along
        # dim 0 on CPUs)
        nearest = sd.max(0).indices
        # for update(): the ascent's logits. Holding q keeps its memory from being reused, so a
        # q at the same address with the same version counter is this q, unmodified.
        self._qn = (q.detach(), q._version, sd)
        return Negatives(
            sim=sim,
            anchors=q,
            positives=k,
            anchor_ids=ctx.ids,
            pool=pool,
            pool_ids=pool_ids,  # (M,) -1: learned, no dataset id
            mask=mask,  # (B, M) all
            sources=ctx.ids.index_select(0, nearest)[:, None],  # (M, 1)
            source_weights=source_weights,  # (M, 1)
        )

    @torch.no_grad()
    def update(self, q: Tensor, k: Tensor, ctx: StepContext) -> None:
        """Fill the rows not yet filled with this step's keys; one step of gradient ascent on
        InfoNCE at tau_neg (q, k detached) for the rows filled before."""
        c = self.cfg
        w = self.W
        m, d = w.shape
        b = k.shape[0]
        q, k = q.to(w.dtype), k.to(w.dtype)
        full = self._filled_host >= m  # host: every row holds data, all of them ascend
        key, self._qn = self._qn, None
        qn = None  # the (B, M) similarities mine() computed, if this is the same q
        if (key is not None and key[0].data_ptr() == q.data_ptr() and key[0].shape == q.shape
                and key[1] == q._version):
            qn = key[2].to(w.dtype)
        g = ascent_gradient(w, q, k, c.tau_neg, qn)  # (M, D)
        if full:
            torch.add(g, self.velocity, alpha=c.mu, out=self.velocity)  # (M, D) mu v + g
            w.add_(self.velocity, alpha=c.lr_neg)  # (M, D) then onto the sphere, in place
            w.div_(w.norm(dim=1, keepdim=True).clamp_min_(1e-12))  # as F.normalize does
        else:
            row = torch.arange(m, device=w.device)  # (M,)
            ascend = (row < self.filled)[:, None]  # (M, 1) rows that already hold data
            fill = (~ascend) & (row < self.filled + b)[:, None]  # (M, 1) rows taking a key now
            keys = F.normalize(k, dim=1)[(row - self.filled).clamp(0, b - 1)]  # (M, D)
            self.velocity.mul_(c.mu).add_(g).mul_(ascend)  # (M, D), 0 on rows not ascending
            stepped = F.normalize(w + c.lr_neg * self.velocity, dim=1)  # (M, D)
            w.copy_(torch.where(ascend, stepped, torch.where(fill, keys, w)))  # (M, D)
        if not full:  # (full: filled stays M)
            self.filled.add_(b).clamp_(max=m)
            self._filled_host = min(self._filled_host + b, m)
        # the (M, D) product, and the (B, M) logits when mine()'s could not be reused
        ctx.charge_mining(b * m * d * (1 if qn is not None else 2))
        ctx.charge_adversary(m * d)
