"""Representation health: is what a run learned a representation at all?

Three figures, on a fixed sample of the evaluated split (at most ``SAMPLE`` items, the same
items for every run of a suite and seed):

- **alignment** (Wang & Isola 2020, alpha = 2): E ||f(x) - f(y)||^2 over positive pairs (two
  views of one item), on the unit-norm projections the objective trains. In [0, 4]; lower is
  better aligned.
- **uniformity** (Wang & Isola 2020, t = 2): log E exp(-2 ||f(x) - f(y)||^2) over all pairs of
  distinct items, on the same projections. In [-4, 0]; 0 means every item has the same
  embedding (collapsed), and -4 is the limit of points spread over a large sphere.
- **RankMe** (Garrido et al. 2023): exp of the entropy of the normalised singular values of
  the (N, F) feature matrix the downstream probes read, p_k = s_k / sum(s). 1 means the
  features lie on a line; its maximum is min(N, F). NOTE: the paper adds eps = 1e-7 to p_k for
  numerical safety; we leave zero terms out instead (their limit p log p -> 0), so identical
  rows give exactly 1 and an orthonormal set exactly its size.

:func:`verdict` turns them, with the run's hardness and its untrained encoder's figures (the
floor), into ``ok``, ``degraded`` or ``collapsed`` and a reason in words (the rule is written
out in its docstring and in ``docs/decisions.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE = 2048  # items of the evaluated split the health figures are computed on

# the verdict's thresholds (see verdict())
COLLAPSED_UNIFORM = -0.1  # mean exp(-2 d^2) above 0.9: the projections sit nearly on one point
COLLAPSED_RANKME = 1.5  # the features span less than two effective directions
COLLAPSED_HARDNESS = 0.95  # the selected negatives are nearly the anchors themselves
LOW_SPREAD_UNIFORM = -0.5  # with that hardness: a space that has lost most of its spread


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """E ||x_i - y_i||^alpha over the rows of two (N, D) views (normalised here)."""
    x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)
    return (x - y).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||x_i - x_j||^2) over the pairs i < j of the (N, D) rows (normalised here).

    Computed from the Gram matrix (||a - b||^2 = 2 - 2 a.b for unit vectors) with a
    log-sum-exp, so it is exact where the mean of exp would underflow."""
    x = F.normalize(x.double(), dim=1)
    n = x.shape[0]
    if n < 2:
        return math.nan
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    sq = (2.0 - 2.0 * (x @ x.T)).clamp_min(0.0)[iu[0], iu[1]]  # (N(N-1)/2,)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())).item()


def rankme(z: Tensor) -> float:
    """exp(entropy of s / sum(s)) for the singular values s of the (N, F) matrix ``z``."""
    if not bool(torch.isfinite(z).all()):  # a diverged encoder: nothing to measure
        return math.nan
    s = torch.linalg.svdvals(z.double())
    total = s.sum()
    if not total > 0:
        return math.nan
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


@dataclass(frozen=True)
class Health:
    align: float
    uniform: float
    rankme: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}align": self.align, f"{prefix}uniform": self.uniform,
                f"{prefix}rankme": self.rankme}


def measure(proj_1: Tensor, proj_2: Tensor, features: Tensor) -> Health:
    """Health of a sample: ``proj_1``/``proj_2`` (N, D) the projections of two views of each
    item, ``features`` (N, F) the un-augmented features the probes read."""
    return Health(alignment(proj_1, proj_2), uniformity(proj_1), rankme(features))


def verdict(metrics: dict[str, float]) -> tuple[str, str]:
    """``(verdict, reason)`` of a run from its final metrics.

    The rule, in order:

    1. **collapsed** when the representation has lost its spread: RankMe of the features
       below ``COLLAPSED_RANKME`` (1.5: they lie on about a line); or uniformity above
       ``COLLAPSED_UNIFORM`` (-0.1: the projections of different items are nearly one point)
       where the untrained encoder's was not (``floor_uniform``; unknown counts as not); or the
       negatives' mean hardness above ``COLLAPSED_HARDNESS`` (0.95: anchors and the negatives
       pushed against them have become nearly the same vector) together with a uniformity
       above ``LOW_SPREAD_UNIFORM`` (-0.5), again where the untrained encoder was spread wider.
       Hardness alone is no evidence: a miner that picks near-duplicates is hard by design in a
       healthy space. NOTE: a small CNN's untrained projections can start on one point
       (digits: uniformity -0.002) while its features already classify well; a run that stays
       there has lost nothing, and rule 2 judges it.
    2. **degraded** when it did not collapse but learned nothing the untrained encoder did not
       already give: kNN accuracy, or linear-probe accuracy, not above the untrained encoder's
       (``floor_knn_acc``, ``floor_linear_acc``: same split, same seed). The two read the
       features differently (fashion-mnist, hcl: kNN level with in-batch, linear probe 1.6
       points under the untrained encoder's), so either one falling short is reported.
       NOTE: a fall in RankMe alone is no sign of it: supcon, with labels,
       folds bbc-news's features towards its 5 classes (RankMe 13.8 against 61.3 untrained)
       at 92.3% kNN.
    3. **ok** otherwise.

    A figure that is missing (NaN or absent) takes no part in the rule."""

    def get(key: str) -> float:
        v = metrics.get(key)
        return math.nan if v is None else float(v)

    uni, rank, hard = get("uniform"), get("rankme"), get("hardness")
    floor_uni = get("floor_uniform")
    reasons = []
    if rank < COLLAPSED_RANKME:
        reasons.append(f"RankMe {rank:.2f} < {COLLAPSED_RANKME} (features on about a line)")
    if uni > COLLAPSED_UNIFORM and not floor_uni > COLLAPSED_UNIFORM:
        was = "" if math.isnan(floor_uni) else f", from {floor_uni:.3f} untrained"
        reasons.append(f"uniformity {uni:.3f} > {COLLAPSED_UNIFORM} (embeddings of different "
                       f"items nearly coincide{was})")
    if hard > COLLAPSED_HARDNESS and uni > LOW_SPREAD_UNIFORM \
            and not floor_uni > LOW_SPREAD_UNIFORM:
        reasons.append(f"hardness {hard:.3f} > {COLLAPSED_HARDNESS} with uniformity "
                       f"{uni:.3f} > {LOW_SPREAD_UNIFORM} (negatives nearly identical to "
                       "their anchors in a space with little spread)")
    if reasons:
        return "collapsed", "; ".join(reasons)
    knn, floor_knn = get("knn_acc"), get("floor_knn_acc")
    if knn <= floor_knn:
        reasons.append(f"kNN accuracy {knn:.4f} is not above the untrained encoder's "
                       f"{floor_knn:.4f}")
    lin, floor_lin = get("linear_acc"), get("floor_linear_acc")
    if lin <= floor_lin:
        reasons.append(f"linear-probe accuracy {lin:.4f} is not above the untrained "
                       f"encoder's {floor_lin:.4f}")
    if "knn_acc" not in metrics:  # a suite without labels: its retrieval MRR instead
        mrr, floor_mrr = get("retrieval_mrr"), get("floor_retrieval_mrr")
        if mrr <= floor_mrr:
            reasons.append(f"retrieval MRR {mrr:.4f} is not above the untrained encoder's "
                           f"{floor_mrr:.4f} (no labels: no kNN accuracy)")
    if reasons:
        return "degraded", "; ".join(reasons)
    return "ok", "spread kept and above the untrained encoder"


@torch.no_grad()
def sample_health(encoder: torch.nn.Module, suite, x: Tensor, sample: int = SAMPLE,
                  chunk: int = 1024) -> Health:
    """Health of ``encoder`` on a fixed sample of the stored items ``x`` (an evaluated split):
    the first ``sample`` items of a permutation seeded 0, with views drawn from a generator
    seeded 0, so every run of a suite is measured on the same items and the same views,
    whatever its own seed. The encoder is in eval mode meanwhile."""
    dev = x.device
    n = min(sample, x.shape[0])
    pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:n].to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    was = encoder.training
    encoder.eval()
    try:
        p1, p2, feats = [], [], []
        for i in range(0, n, chunk):
            xs = x[pick[i:i + chunk]]
            v1, v2 = suite.views(xs, gen)
            p1.append(encoder(v1).float())
            p2.append(encoder(v2).float())
            feats.append(encoder.features(suite.prepare(xs)).float())
    finally:
        encoder.train(was)
    return measure(torch.cat(p1), torch.cat(p2), torch.cat(feats))
