"""The contract between a negative-sampling strategy and the harness.

A strategy looks at the anchors' embeddings and returns plain data, a :class:`Negatives`: which
candidate embeddings each anchor is contrasted against, with optional weights, and where each
candidate came from (dataset ids, so the harness can count false negatives with its oracle labels).
It never computes the loss and never sees labels.

Shared work lives here (pytorch-metric-learning's ``BaseMiner.forward`` -> ``mine`` pattern):
shape, dtype and device checks on every call, and value checks (own instance never selected,
weights finite and non-negative) accumulated on the device so that they cost no host sync;
:meth:`Strategy.check` raises on them at the harness's log intervals.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from negbench import NegbenchError


class StrategyError(NegbenchError, ValueError):
    """A strategy was misconfigured or returned invalid negatives."""


# --------------------------------------------------------------------------- search spaces
@dataclass(frozen=True)
class Float:
    """A continuous tuning range, optionally sampled on a log scale."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    """An integer tuning range, optionally sampled on a log scale."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """A categorical tuning choice."""

    options: tuple


# --------------------------------------------------------------------------- plain data
@dataclass
class Negatives:
    """What a strategy selected for one step.

    Shapes: A anchors, P pool candidates, D embedding size, K candidates per anchor in index
    form, R label sources per candidate.

    - ``anchors``/``positives`` (A, D): the pairs the objective pulls together. Usually the
      query views and their keys; a symmetric strategy (SimCLR) returns both directions (A = 2B).
    - ``anchor_ids`` (A,): dataset ids of the anchors.
    - ``pool`` (P, D): candidate negatives; ``pool_ids`` (P,): their dataset ids, -1 for
      synthesized candidates.
    - Which candidates each anchor uses, in one of two forms:
        * mask form (``index`` is None): ``mask`` (A, P) bool over the shared pool;
        * index form: ``index`` (A, K) int64 rows of the pool for each anchor (for per-anchor
          candidates: mined or synthesized for one anchor), with ``mask`` (A, K) marking the
          valid ones (None: all valid). This keeps per-anchor pools at O(A x K).
    - ``weights``, shaped like the selection ((A, P) or (A, K)), optional: non-negative
      importance weights (1 where absent).
    - ``sources``/``source_weights`` (P, R), optional: the real dataset ids whose oracle labels a
      candidate stands for and with which weight. The rule for synthesized candidates: a mixed
      negative counts its parents' labels by their mixing weights; a learned (adversarial) one
      counts the label of its nearest real training embedding. Absent, ``sources`` is
      ``pool_ids[:, None]`` with weight 1.
    - ``extra`` (A, S, D), optional: per-anchor candidates on top of the shared selection
      (mined for, or synthesized from, one anchor: MoCHi's mixes), with ``extra_ids`` (A, S)
      (-1 for synthesized), ``extra_mask`` (A, S) (None: all valid), ``extra_weights`` (A, S)
      and ``extra_sources``/``extra_source_weights`` (A, S, R') as above. They cost O(A x S x D),
      not a pool row per anchor. Every method below appends them as S more columns.
      ``extra`` may be left None when ``sim`` gives the anchors' similarities to them
      (virtual extras: MoCHi's mixes are known by their parents, and their similarities follow
      from the (A, P) matrix without forming (A, S, D)); ``extra_ids`` then gives S.
    - ``sim`` (A, W), optional: the anchor x candidate similarities (cosine for unit vectors), with
      their gradients, when the strategy computed them while selecting; the objective then uses
      them instead of multiplying the embeddings again. The strategy answers for them equalling
      ``anchors`` against each candidate (the tests compare them with a recomputation). The
      objective's FLOPs count that product, so the strategy does not charge it as mining.
    - ``tilt`` (a host float t), optional: importance weights e^{t s} over each anchor's
      selected candidates, normalised to mean 1 (HCL's q_beta, t = beta / tau), on top of
      ``weights``. The objective applies them natively (no (A, W) weight tensor, one backward
      pass); ``tilt_grad`` says whether the loss is differentiated through them (HCL's code is).
      :meth:`candidate_weights` includes them, for the meters and the triplet objective.
    - ``tau_plus``: the class prior of the debiased estimator (Chuang et al. 2020); 0 = none.
    - ``batch_views``: the number of leading pool rows that are this step's own views. Any
      other pool entry holding the anchor's instance (a queue can) is an instance collision;
      so is an extra candidate holding it.
    - ``extra_positives`` (A, W) bool, optional: candidates that are further *positives* of the
      anchor, disjoint from the selection (SupCon's same-class items, an oracle reference's).
      The InfoNCE objective then averages the anchor's log-probability over its positive and
      these, with every one of them in the denominator too (Khosla et al. 2020, L_out); the
      meters see only the selection, so they are never counted as negatives.
    """

    anchors: Tensor
    positives: Tensor
    anchor_ids: Tensor
    pool: Tensor
    pool_ids: Tensor
    mask: Tensor | None = None
    index: Tensor | None = None
    weights: Tensor | None = None
    sources: Tensor | None = None
    source_weights: Tensor | None = None
    extra: Tensor | None = None
    extra_ids: Tensor | None = None
    extra_mask: Tensor | None = None
    extra_weights: Tensor | None = None
    extra_sources: Tensor | None = None
    extra_source_weights: Tensor | None = None
    tau_plus: float = 0.0
    batch_views: int = 0
    sim: Tensor | None = None
    tilt: float = 0.0
    tilt_grad: bool = True
    extra_positives: Tensor | None = None
    # derived (A, W) tensors the objective, the meter and the contract check share within a
    # step (the selection, as bool and as 0/1 floats), each kept with the fields it was made
    # from and used only while those are still the same objects (a strategy may reassign them)
    _memo: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def _sel_fields(self) -> tuple:
        return (self.mask, self.index, self.extra_ids, self.extra_mask)

    def _recall(self, key: Any) -> Tensor | None:
        hit = self._memo.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], self._sel_fields(), strict=True)):
            return None
        return hit[1]

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[0]

    @property
    def pool_size(self) -> int:
        return self.pool.shape[0]

    @property
    def num_extra(self) -> int:
        """S: per-anchor extra candidates (0 when there are none)."""
        return 0 if self.extra_ids is None else self.extra_ids.shape[1]

    @property
    def width(self) -> int:
        """Candidate columns per anchor: P (mask form) or K (index form), plus S extras."""
        w = self.pool.shape[0] if self.index is None else self.index.shape[1]
        return w + self.num_extra

    def _with_extra(self, shared: Tensor, extra: Tensor | None) -> Tensor:
        """Append the S extra columns to a (1|A, W, ...) shared-selection tensor."""
        if self.extra_ids is None:
            return shared
        a = self.num_anchors
        return torch.cat([shared.expand(a, *shared.shape[1:]), extra], dim=1)

    def selected(self) -> Tensor:
        """(A, W) bool: the (anchor, candidate) pairs in use (built once per Negatives)."""
        sel = self._recall("selected")
        if sel is None:
            sel = self._selected()
            self._memo["selected"] = (self._sel_fields(), sel)
        return sel

    def selected_as(self, dtype: torch.dtype) -> Tensor:
        """(A, W) the selection as 0/1 in ``dtype`` (converted once per Negatives and dtype)."""
        key = ("selected", dtype)
        w = self._recall(key)
        if w is None:
            w = self.selected().to(dtype)
            self._memo[key] = (self._sel_fields(), w)
        return w

    def _selected(self) -> Tensor:
        if self.mask is not None:
            sel = self.mask
        else:
            sel = torch.ones(self.index.shape, dtype=torch.bool, device=self.index.device)
        if self.extra_ids is None:
            return sel
        em = self.extra_mask
        if em is None:
            em = torch.ones(self.extra_ids.shape, dtype=torch.bool, device=self.extra_ids.device)
        return torch.cat([sel, em], dim=1)

    def similarity(self) -> Tensor:
        """(A, W) dot products anchor x candidate (cosine for unit vectors), with gradients."""
        if self.sim is not None:
            return self.sim
        if self.index is None:
            sim = self.anchors @ self.pool.T  # (A, P)
        else:
            cand = self.pool[self.index]  # (A, K, D)
            sim = torch.einsum("ad,akd->ak", self.anchors, cand)  # (A, K)
        if self.extra is None:
            return sim
        return torch.cat([sim, torch.einsum("ad,asd->as", self.anchors, self.extra)], dim=1)

    def candidate_weights(self) -> Tensor | None:
        """(A, W) weights, or None when no candidate is weighted."""
        if self.tilt:
            sim = self.similarity()
            if not self.tilt_grad:
                sim = sim.detach()
            w = self.plain_weights()
            sel = self.selected()
            if w is not None:
                sel = sel & (w > 0)
            t = tilt_weights(sim, sel, self.tilt)  # (A, W)
            return t if w is None else t * w.to(t.dtype)
        return self.plain_weights()

    def plain_weights(self) -> Tensor | None:
        """(A, W) ``weights`` and ``extra_weights`` without the tilt, or None when neither is
        given (the objective applies a tilt itself)."""
        if self.weights is None and self.extra_weights is None:
            return None
        w = self.weights
        if w is None:
            w = torch.ones(self.width - self.num_extra, dtype=self.anchors.dtype,
                           device=self.anchors.device).expand(self.num_anchors, -1)
        if self.extra_ids is None:
            return w
        ew = self.extra_weights
        if ew is None:
            ew = torch.ones(self.extra_ids.shape, dtype=w.dtype, device=w.device)
        return torch.cat([w, ew], dim=1)

    def is_weighted(self, tilt: bool = True) -> bool:
        """Whether any candidate carries a weight: ``weights``, ``extra_weights`` or, unless
        ``tilt`` is False, a tilt (a host test: no device work)."""
        return (tilt and bool(self.tilt)) or not (self.weights is None
                                                   and self.extra_weights is None)

    def selection_weights(self, dtype: torch.dtype, tilt: bool = True) -> Tensor:
        """(A, W) in ``dtype``: each selected pair's weight (:meth:`candidate_weights`, or
        :meth:`plain_weights` when ``tilt`` is False), 0 for the pairs not selected. Nothing
        weighted, it is the 0/1 selection shared within the step (:meth:`selected_as`)."""
        w = self.candidate_weights() if tilt else self.plain_weights()
        if w is None:
            return self.selected_as(dtype)
        return self.selected() * w.to(dtype)  # (A, W)

    def candidate_ids(self) -> Tensor:
        """(1, P) or (A, W) dataset ids of each row's candidates."""
        ids = self.pool_ids[None, :] if self.index is None else self.pool_ids[self.index]
        return self._with_extra(ids, self.extra_ids)

    def label_sources(self) -> tuple[Tensor, Tensor]:
        """``(sources, source_weights)`` per candidate: (1, P, R) or (A, W, R)."""
        dt, dev = self.pool.dtype, self.pool.device
        if self.sources is None:
            ids = (self.pool_ids[None, :] if self.index is None
                   else self.pool_ids[self.index])[..., None]  # (1|A, P|K, 1)
            src, sw = ids, torch.ones(ids.shape, dtype=dt, device=dev)
        elif self.index is None:
            src, sw = self.sources[None], self.source_weights[None]
        else:
            src, sw = self.sources[self.index], self.source_weights[self.index]
        if self.extra_ids is None:
            return src, sw
        if self.extra_sources is None:
            esrc = self.extra_ids[..., None]  # (A, S, 1)
            esw = torch.ones(esrc.shape, dtype=dt, device=dev)
        else:
            esrc, esw = self.extra_sources, self.extra_source_weights.to(dt)
        r = max(src.shape[-1], esrc.shape[-1])

        def pad(t: Tensor, fill: float) -> Tensor:
            return torch.nn.functional.pad(t, (0, r - t.shape[-1]), value=fill)

        return (self._with_extra(pad(src, -1), pad(esrc, -1)),
                self._with_extra(pad(sw, 0.0), pad(esw, 0.0)))

    def label_match(self, labels: Tensor) -> Tensor:
        """(A, W): how far each candidate shares its anchor's oracle label. ``labels`` holds the
        label of each dataset id, indexed by id, and one entry more at its end that no anchor's
        label equals (which the id -1 of a synthesized candidate reads).

        When every candidate stands for its own id (no ``sources``/``extra_sources``), bool: the
        labels are equal. Otherwise floats in [0, 1] in the pool's dtype: the share of the
        candidate's label sources, by their weights, with the anchor's label (sources of id -1
        count for nothing)."""
        la = labels[self.anchor_ids]  # (A,)
        if self.sources is None and self.extra_sources is None:
            return la[:, None] == labels[self.candidate_ids()]  # (A, W)
        src, sw = self.label_sources()  # (1|A, P|K, R)
        sw = sw.to(self.pool.dtype) * (src >= 0)
        same = (la[:, None, None] == labels[src.clamp_min(0)]).to(sw.dtype)  # (A, W, R)
        return (same * sw).sum(-1) / sw.sum(-1).clamp_min(1e-12)  # (A, W)

    def own_instance(self, rows: slice = slice(None)) -> Tensor:
        """(A, W) bool, or (rows, W): candidates that hold the anchor's own instance. Compared
        block by block (shared, then extras), so no (A, W) int64 id matrix is formed."""
        a_ids = self.anchor_ids[rows, None]  # (A', 1)
        ids = self.pool_ids[None, :] if self.index is None else self.pool_ids[self.index[rows]]
        own = a_ids == ids  # (A', P) or (A', K)
        if self.extra_ids is None:
            return own
        return torch.cat([own.expand(a_ids.shape[0], -1),
                          a_ids == self.extra_ids[rows]], dim=1)  # (A', W)

    def instance_collisions(self) -> Tensor:
        """() int64: pool entries past the step's own views (``batch_views``), and extra
        candidates, that hold their anchor's own instance (selected or not). Only those columns
        are compared: with nothing past the views (in-batch) nothing is."""
        a_ids, bv = self.anchor_ids[:, None], self.batch_views  # (A, 1)
        if self.index is None and bv == self.pool_size and self.extra_ids is None:
            return torch.zeros((), dtype=torch.long, device=a_ids.device)  # nothing past the views
        if self.index is None:
            n = torch.count_nonzero(a_ids == self.pool_ids[None, bv:])  # (A, P - bv)
        else:  # (A, K): the row test is needed per entry
            n = torch.count_nonzero((a_ids == self.pool_ids[self.index]) & (self.index >= bv))
        if self.extra_ids is not None:  # extras are rows past the pool
            n = n + torch.count_nonzero(a_ids == self.extra_ids)  # (A, S)
        return n

    def restrict(self, keep: Tensor) -> Negatives:
        """A copy whose selection is ``keep`` (A, W) bool, a subset of :meth:`selected`: the
        shared columns go to ``mask`` (mask or index form), the S extra columns to
        ``extra_mask``; weights, ids and similarities stay as they are."""
        w0 = self.width - self.num_extra
        ch: dict = {"mask": keep[:, :w0]}
        if self.extra_ids is not None:
            ch["extra_mask"] = keep[:, w0:]
        return dataclasses.replace(self, **ch)

    def append_extra(self, extra: Tensor, ids: Tensor, mask: Tensor | None = None) -> Negatives:
        """A copy with S' per-anchor candidates appended after any extras: ``extra`` (A, S', D)
        (with the gradients it has), ``ids`` (A, S') their dataset ids, ``mask`` (A, S') the
        valid ones (None: all).

        The new columns weigh 1 where candidates are weighted (a tilt weighs them like any
        selected candidate) and have no label source where candidates have label sources (so
        with ids -1 they count as true negatives). Virtual extras (``extra`` None) stay virtual:
        the new columns then live in ``sim`` alone, which gains their similarities whenever it
        is given."""
        a, s_new = ids.shape
        dev = ids.device
        ch: dict = {}
        if self.extra_ids is None:
            ch["extra"], ch["extra_ids"], ch["extra_mask"] = extra, ids, mask  # (A, S', ...)
        else:
            s = self.num_extra
            if self.extra is not None:
                ch["extra"] = torch.cat([self.extra, extra], dim=1)  # (A, S + S', D)
            ch["extra_ids"] = torch.cat([self.extra_ids, ids], dim=1)  # (A, S + S')
            if self.extra_mask is not None or mask is not None:
                old = self.extra_mask
                if old is None:
                    old = torch.ones(a, s, dtype=torch.bool, device=dev)
                new = mask
                if new is None:
                    new = torch.ones(a, s_new, dtype=torch.bool, device=dev)
                ch["extra_mask"] = torch.cat([old, new], dim=1)  # (A, S + S')
            if self.extra_weights is not None:
                one = torch.ones(a, s_new, dtype=self.extra_weights.dtype, device=dev)
                ch["extra_weights"] = torch.cat([self.extra_weights, one], dim=1)
            if self.extra_sources is not None:
                r = self.extra_sources.shape[-1]
                ch["extra_sources"] = torch.cat(  # (A, S + S', R'): no label source
                    [self.extra_sources,
                     torch.full((a, s_new, r), -1, dtype=torch.long, device=dev)], 1)
                ch["extra_source_weights"] = torch.cat(
                    [self.extra_source_weights,
                     torch.zeros(a, s_new, r, dtype=self.extra_source_weights.dtype,
                                 device=dev)], 1)
        if self.sim is not None:
            col = (self.anchors[:, None, :] * extra).sum(-1)  # (A, S')
            ch["sim"] = torch.cat([self.sim, col.to(self.sim.dtype)], dim=1)  # (A, W + S')
        if self.extra_positives is not None:  # the new columns are negatives
            ch["extra_positives"] = torch.cat(  # (A, W + S')
                [self.extra_positives, torch.zeros(a, s_new, dtype=torch.bool, device=dev)], 1)
        return dataclasses.replace(self, **ch)


CHECK_ROWS = 64  # anchor rows per step that the own-instance contract check compares


@dataclass
class StepContext:
    """What a strategy may use besides the embeddings.

    ``encode(ids, grad)`` embeds extra training items (one augmented view each, through the
    encoder; with ``grad`` they are trained, otherwise encoded under no-grad). ``encode_all()``
    embeds the whole training set un-augmented under no-grad (an index refresh). Both are charged
    to the cost meter by the harness; strategies charge their own similarity searches through
    ``charge_mining`` (multiply-adds) and adversary or mixing work through ``charge_adversary``
    (parameter-elements updated). ``step`` and ``fraction`` are host numbers: schedules read them
    with no device sync.
    """

    step: int
    fraction: float  # of the budget spent before this step, in [0, 1)
    ids: Tensor  # (B,) dataset ids of the batch
    generator: torch.Generator
    n_train: int
    encode: Callable[[Tensor, bool], Tensor]
    encode_all: Callable[[], Tensor]
    charge_mining: Callable[[int], None] = lambda macs: None
    charge_adversary: Callable[[int], None] = lambda n: None
    temperature: float = 0.2  # the objective's tau, for strategies whose weights use it (HCL)
    # (n_train,) the oracle labels by dataset id: given to an oracle reference alone
    # (Strategy.oracle), None for every other strategy, which never sees a label
    labels: Tensor | None = None


# --------------------------------------------------------------------------- tilted weights
class _TiltWeights(torch.autograd.Function):
    """w = n e / sum(e), e = exp(t (s - 1)) on the selected entries (0 elsewhere), with the
    backward written out: for a selected entry j, dw_i/ds_j = t w_i (delta_ij - w_j / n), so
    dL/ds = t w (g - sum(g w) / n): two passes over (A, P) where autograd through the plain
    expression takes six."""

    @staticmethod
    def forward(ctx, sim: Tensor, sel: Tensor, t: float, n: Tensor) -> Tensor:
        e = torch.exp(torch.add(sim, -1.0).mul_(t)).mul_(sel)  # (A, P) 0 where not selected
        w = e.mul_(n / e.sum(1, keepdim=True).clamp_min(torch.finfo(sim.dtype).tiny))  # (A, P)
        ctx.t = t
        ctx.save_for_backward(w, n)
        return w

    @staticmethod
    def backward(ctx, g: Tensor):
        w, n = ctx.saved_tensors
        gw = g * w  # (A, P)
        c = gw.sum(1, keepdim=True) / n.clamp_min(1.0)  # (A, 1)
        return (gw - w * c).mul_(ctx.t), None, None, None


def tilt_weights(sim: Tensor, sel: Tensor, t: float) -> Tensor:
    """(A, P) w = e^{t s}, normalised to mean 1 over each row's selected entries, 0 elsewhere.

    Cosines lie in [-1, 1], so e^{t (s - 1)} never overflows, and while 2 t <= 80 it never
    underflows either: that constant shift costs one pass fewer than a per-row one. A larger t
    shifts each row by its largest selected exponent instead. NOTE: no -inf fill and no
    logsumexp: exp(-inf) is several times slower than exp of a normal number on CPUs."""
    n = sel.sum(1, keepdim=True, dtype=sim.dtype)  # (A, 1) negatives per anchor
    tiny = torch.finfo(sim.dtype).tiny
    if 2.0 * t <= 80.0:
        return _TiltWeights.apply(sim, sel, t, n)  # (A, P)
    x = sim * t  # (A, P)
    m = torch.where(sel, x, float("-inf")).amax(1, keepdim=True)  # (A, 1) largest selected
    m = torch.nan_to_num(m, neginf=0.0).detach()  # rows without negatives
    # selected weights stay > 0 (an underflow counts as the smallest normal number)
    e = torch.exp(torch.where(sel, x - m, 0.0)).clamp_min(tiny) * sel  # (A, P)
    return e * (n / e.sum(1, keepdim=True).clamp_min(tiny))  # (A, P)


# --------------------------------------------------------------------------- base class
class Strategy(nn.Module):
    """Base class of every negative-sampling strategy.

    A subclass sets ``name`` (via :func:`negbench.strategies.register`), ``Config`` (a frozen
    dataclass of its knobs, with a ``space`` class attribute for tuning), declares ``cfg`` as
    that type (``cfg: MyConfig``, so that ``self.cfg`` is typed) and implements :meth:`mine`; a
    stateful one also implements :meth:`update`. State lives in registered buffers.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    paper: ClassVar[str] = ""
    # an oracle reference reads the labels (ctx.labels): it bounds what strategies could reach,
    # is marked as such in every run and report, and is never ranked or named a winner
    oracle: ClassVar[bool] = False
    cfg: Any  # an instance of Config: each subclass narrows it to its own (cfg: MyConfig)

    def __init__(self, cfg: Any, *, dim: int, n_train: int):
        super().__init__()
        if not dataclasses.is_dataclass(cfg) or not isinstance(cfg, self.Config):
            raise StrategyError(f"{self.name}: expected a {self.Config.__name__}, got {cfg!r}")
        self.cfg = cfg
        self.dim = dim
        self.n_train = n_train
        self.register_buffer("_violations", torch.zeros((), dtype=torch.long), persistent=False)
        self._checked: dict = {}  # id -> (weak ref, version) of the weights checked last step

    # -- what the harness asks of a strategy
    @property
    def key_momentum(self) -> float | None:
        """Momentum of the key encoder this strategy asks for (None: keys from the encoder)."""
        return None

    def state_bytes(self) -> int:
        """Bytes of state kept between steps (queues, indexes, learned negatives)."""
        total = sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n[0] != "_")
        total += sum(p.numel() * p.element_size() for p in self.parameters())
        return total

    def extra_metrics(self) -> dict[str, float]:
        """Scalars the harness logs at each log interval (e.g. a curriculum's window)."""
        return {}

    # -- the step
    def select(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        if q.ndim != 2 or q.shape != k.shape:
            raise StrategyError(f"{self.name}: q and k must both be (B, D); got {tuple(q.shape)} "
                                f"and {tuple(k.shape)}")
        if q.device != k.device:
            raise StrategyError(f"{self.name}: q on {q.device} but k on {k.device}")
        if ctx.ids.shape != (q.shape[0],):
            raise StrategyError(f"{self.name}: ctx.ids must be ({q.shape[0]},), "
                                f"got {tuple(ctx.ids.shape)}")
        negs = self.mine(q, k, ctx)
        self._check_shapes(negs, q)
        self._count_violations(negs, ctx.step)
        return negs

    def mine(self, q: Tensor, k: Tensor, ctx: StepContext) -> Negatives:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, q: Tensor, k: Tensor, ctx: StepContext) -> None:
        """Called after the optimizer step with detached q and k (bank enqueue, ascent, ...)."""

    # -- validation
    def _check_shapes(self, negs: Negatives, q: Tensor) -> None:
        if not isinstance(negs, Negatives):
            raise StrategyError(f"{self.name}: mine() must return Negatives, got {type(negs)}")
        a, d = negs.anchors.shape
        p = negs.pool.shape[0]
        want = {
            "positives": (negs.positives, (a, d)),
            "anchor_ids": (negs.anchor_ids, (a,)),
            "pool": (negs.pool, (p, d)),
            "pool_ids": (negs.pool_ids, (p,)),
        }
        if negs.index is None:
            if negs.mask is None:
                raise StrategyError(f"{self.name}: Negatives needs a mask (A, P) "
                                    "or an index (A, K)")
            sel = (a, p)
        else:
            if negs.index.ndim != 2 or negs.index.shape[0] != a:
                raise StrategyError(f"{self.name}: Negatives.index has shape "
                                    f"{tuple(negs.index.shape)}, expected ({a}, K)")
            sel = (a, negs.index.shape[1])
            want["index"] = (negs.index, sel)
        if negs.mask is not None:
            want["mask"] = (negs.mask, sel)
        if negs.weights is not None:
            want["weights"] = (negs.weights, sel)
        if negs.extra is not None and negs.extra_ids is None:
            raise StrategyError(f"{self.name}: Negatives.extra given without extra_ids")
        if negs.extra_ids is not None:
            if negs.extra is None and negs.sim is None:
                raise StrategyError(f"{self.name}: Negatives.extra_ids given without extra "
                                    "(A, S, D) or sim (A, W) to give their similarities")
            if negs.extra_ids.ndim != 2 or negs.extra_ids.shape[0] != a:
                raise StrategyError(f"{self.name}: Negatives.extra_ids has shape "
                                    f"{tuple(negs.extra_ids.shape)}, expected ({a}, S)")
            es = tuple(negs.extra_ids.shape)
            if negs.extra is not None:
                if negs.extra.ndim != 3 or tuple(negs.extra.shape) != (*es, d):
                    raise StrategyError(f"{self.name}: Negatives.extra has shape "
                                        f"{tuple(negs.extra.shape)}, expected ({a}, {es[1]}, {d})")
                want["extra"] = (negs.extra, tuple(negs.extra.shape))
            for f in ("extra_mask", "extra_weights"):
                if getattr(negs, f) is not None:
                    want[f] = (getattr(negs, f), es)
            if negs.extra_sources is not None:
                if negs.extra_source_weights is None:
                    raise StrategyError(f"{self.name}: extra_sources given without "
                                        "extra_source_weights")
                er = negs.extra_sources.shape[-1]
                want["extra_sources"] = (negs.extra_sources, (*es, er))
                want["extra_source_weights"] = (negs.extra_source_weights, (*es, er))
        if negs.sim is not None:
            want["sim"] = (negs.sim, (a, sel[1] + negs.num_extra))
        if negs.extra_positives is not None:
            want["extra_positives"] = (negs.extra_positives, (a, sel[1] + negs.num_extra))
            if negs.extra_positives.dtype != torch.bool:
                raise StrategyError(f"{self.name}: Negatives.extra_positives must be bool")
        if negs.sources is not None:
            if negs.source_weights is None:
                raise StrategyError(f"{self.name}: sources given without source_weights")
            r = negs.sources.shape[1] if negs.sources.ndim == 2 else -1
            want["sources"] = (negs.sources, (p, r))
            want["source_weights"] = (negs.source_weights, (p, r))
        for field, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise StrategyError(f"{self.name}: Negatives.{field} has shape {tuple(t.shape)}, "
                                    f"expected {shape}")
            if t.device != q.device:
                raise StrategyError(f"{self.name}: Negatives.{field} is on {t.device}, "
                                    f"the anchors on {q.device}")
        if negs.mask is not None and negs.mask.dtype != torch.bool:
            raise StrategyError(f"{self.name}: Negatives.mask must be bool, got {negs.mask.dtype}")
        longs = ("anchor_ids", "pool_ids") + (("sources",) if negs.sources is not None else ())
        longs += ("index",) if negs.index is not None else ()
        longs += ("extra_ids",) if negs.extra_ids is not None else ()
        longs += ("extra_sources",) if negs.extra_sources is not None else ()
        if negs.extra_mask is not None and negs.extra_mask.dtype != torch.bool:
            raise StrategyError(f"{self.name}: Negatives.extra_mask must be bool")
        for field in longs:
            if getattr(negs, field).dtype != torch.long:
                raise StrategyError(f"{self.name}: Negatives.{field} must be int64")
        if not 0.0 <= negs.tau_plus < 1.0:
            raise StrategyError(f"{self.name}: tau_plus must lie in [0, 1), got {negs.tau_plus}")
        if not 0 <= negs.batch_views <= p:
            raise StrategyError(f"{self.name}: batch_views={negs.batch_views} outside [0, {p}]")

    @torch.no_grad()
    def _count_violations(self, negs: Negatives, step: int) -> None:
        """Accumulate value violations on the device: no host sync here.

        The own-instance test looks at CHECK_ROWS anchor rows per step, a block that moves by
        CHECK_ROWS rows each step, so every row position is checked every A / CHECK_ROWS steps
        (8 at A = 512): a strategy that selects its own instances systematically is caught at
        once, in the query and the key halves alike, for an eighth of the (A, W) comparison.
        (The false-negative meter counts every pair.) Indices and weights are checked whole, by
        their least and largest entries: one pass each (five for an elementwise test), and a
        tensor with any entry out of range counts as one violation."""
        a = negs.num_anchors
        r = min(a, CHECK_ROWS)
        o = (step * r) % a
        rows = slice(o, min(o + r, a))
        # NOTE: count_nonzero, not .sum(): summing a bool tensor into int64 is much slower on CPUs
        bad = torch.count_nonzero(negs.own_instance(rows).logical_and_(negs.selected()[rows]))
        if negs.index is not None and negs.index.numel():
            lo, hi = torch.aminmax(negs.index)
            bad = bad + ((lo < 0) | (hi >= negs.pool_size))
        if not math.isfinite(negs.tilt) or negs.tilt < 0:
            raise StrategyError(f"{self.name}: tilt must be a finite number >= 0, "
                                f"got {negs.tilt}")
        checked = {}
        for w in (negs.weights, negs.extra_weights, negs.source_weights,
                  negs.extra_source_weights):
            if w is None:
                continue
            # a strategy's constant (the same tensor as last step, not written since, as its
            # version counter says) was checked then
            seen = self._checked.get(id(w))
            if w.numel() and (seen is None or seen[0]() is not w or seen[1] != w._version):
                lo, hi = torch.aminmax(w)  # NaN anywhere makes both NaN: neither test passes
                bad = bad + ~((lo >= 0) & (hi < math.inf))
            checked[id(w)] = (weakref.ref(w), w._version)  # weak: holds no step's tensors
        object.__setattr__(self, "_checked", checked)  # not Module.__setattr__, a slow one
        self._violations.add_(bad)  # in place: a Module attribute assignment is slow

    def check(self) -> None:
        """Raise if any returned Negatives broke the contract (syncs with the device)."""
        n = int(self._violations)
        if n:
            raise StrategyError(
                f"{self.name}: {n} contract violations (an anchor's own instance selected as a "
                "negative, one per pair; an index tensor reaching outside the pool or a weight "
                "tensor with a negative or non-finite entry, one per tensor)"
            )
