"""What the harness measures about the negatives a strategy selected, with the oracle labels that
never reach the strategy.

- **FNR**: over all selected (anchor, negative) pairs, the fraction whose labels are equal. A
  synthesized negative counts its label sources by their weights (Negatives.label_sources).
- **weighted FNR**: the same with the strategy's weights: sum of w over same-label pairs / sum w.
- **hardness**: the mean cosine similarity between an anchor and its selected negatives.
- **instance collisions**: pool entries outside the step's own views holding the anchor's own
  instance (always excluded from the negatives; counted apart, per anchor).
- **FNR by hardness decile**: pairs are binned by similarity into a fine histogram on the device;
  decile edges and per-decile FNR are read from it when a snapshot is taken. The histogram takes
  the pairs of the first 64 anchors of every 4th step (the batch is a random draw, so these are
  a random sample of the run's pairs); FNR and hardness themselves count every pair.

Everything accumulates in device tensors; :meth:`NegativeMeter.snapshot` is the only host sync
and the harness calls it at log intervals.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negbench.strategies import Negatives

BINS = 1000  # similarity histogram over [-1, 1] for the hardness deciles
HIST_ANCHORS = 64  # anchors per sampled step whose pairs enter that histogram
HIST_EVERY = 4  # the histogram samples every 4th step (the first, the fifth, ...)

# accumulator slots: counts (int64) and sums (float). An unweighted step of real candidates
# (the common case) touches counts only: its weight sums are its pair counts, kept apart in
# _UPAIRS/_UFN, so that no per-step conversion or second accumulator update is needed.
_PAIRS, _FN, _COLL, _UPAIRS, _UFN = range(5)  # counts
_FNF, _W, _WFN, _SIM = range(4)  # sums: fractional FN (synthesized candidates), weights, similarity


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def false_negative_matrix(negs: Negatives, labels: Tensor) -> Tensor:
    """(A, W) in [0, 1]: how much each candidate shares the anchor's label (1 or 0 for real
    candidates; the weighted share of its label sources for synthesized ones)."""
    label_of = torch.cat([labels, labels.new_full((1,), -1)])  # id -1 reads -1
    return negs.label_match(label_of).to(negs.pool.dtype)  # (A, W)


class NegativeMeter:
    def __init__(self, labels: Tensor):
        self.labels = labels  # (N_train,) on the run's device
        dev = labels.device
        # the labels with -1 appended: indexed by a candidate id, -1 (not a training item, by
        # the Negatives contract the only negative id) reads that -1, which no anchor has
        # (N_train + 1,); the false-negative filter (harness.filters) reads it too
        self.label_of = torch.cat([labels, labels.new_full((1,), -1)])
        self.steps = 0
        self.dtype = _acc_dtype(dev)
        self.counts = torch.zeros(5, dtype=torch.long, device=dev)
        self.sums = torch.zeros(4, dtype=self.dtype, device=dev)
        # per similarity bin: selected pairs that are not false negatives, then those that are
        self.hist = torch.zeros(2 * BINS, dtype=self.dtype, device=dev)
        self.anchors = 0  # a host count: shapes are known on the host
        self._prev = torch.zeros(7, dtype=torch.float64)  # totals at the last snapshot

    @torch.no_grad()
    def observe(self, negs: Negatives, sim: Tensor) -> None:
        """Account one step's selection; ``sim`` is the (A, P|K) cosine similarity matrix.

        The harness calls it right after the objective's forward pass, while ``sim`` and the
        mask are still in cache. Each (A, W) pass here costs about as much as one of the
        objective's, and each small op has a fixed cost besides, so the path of real, unweighted
        candidates (most strategies) makes few of either: the label comparison, its conjunction
        with the selection, two counts, the masked similarity sum, and one update of each
        accumulator."""
        dt = self.dtype
        sel = negs.selected()  # (A, W) bool
        self.anchors += negs.num_anchors
        # one fused pass with the 0/1 selection the objective converted already (a float*bool
        # product converts the mask again); float32 within the step, float64 across steps
        sim_sum = torch.dot(sim.reshape(-1), negs.selected_as(sim.dtype).reshape(-1))
        coll = negs.instance_collisions()
        match = negs.label_match(self.label_of)  # (A, W) bool, or shares for label sources
        if match.dtype == torch.bool:
            # real candidates only: every pair is a false negative or not, so counts of bools
            fn_sel = match.logical_and_(sel)  # (A, W)
            pairs, fns = torch.count_nonzero(sel), torch.count_nonzero(fn_sel)
            if not negs.is_weighted():
                self.counts += torch.stack([pairs, fns, coll, pairs, fns])
                self.sums.select(0, _SIM).add_(sim_sum)
            else:
                w = negs.selection_weights(sim.dtype)  # (A, W)
                zero = torch.zeros_like(pairs)
                self.counts += torch.stack([pairs, fns, coll, zero, zero])
                self.sums += torch.stack([torch.zeros_like(sim_sum), w.sum(), (w * fn_sel).sum(),
                                          sim_sum]).to(dt)
            hist_fn = fn_sel
        else:
            fn = match  # (A, W) in [0, 1]
            w = negs.selection_weights(fn.dtype)  # (A, W)
            fn_f = fn * negs.selected_as(fn.dtype)
            pairs = torch.count_nonzero(sel)
            zero = torch.zeros_like(pairs)
            self.counts += torch.stack([pairs, zero, coll, zero, zero])
            self.sums += torch.stack([fn_f.sum(dtype=dt), w.sum(dtype=dt),
                                      (fn * w).sum(dtype=dt), sim_sum.to(dt)])
            hist_fn = fn_f
        # FNR by hardness decile: from the first HIST_ANCHORS anchors of every HIST_EVERY-th
        # step (a random batch, so an unbiased sample of the pairs), which keeps the
        # histogram's cost flat in A and small beside the step's
        self.steps += 1
        if (self.steps - 1) % HIST_EVERY:
            return
        r = min(sel.shape[0], HIST_ANCHORS)
        # via int32: a float -> int64 conversion costs much more on some CPUs
        b = sim[:r].mul(0.5 * BINS).add_(0.5 * BINS).to(torch.int32).clamp_(0, BINS - 1)
        if hist_fn.dtype == torch.bool:  # one scatter: a false negative's key is its bin + BINS
            key = b.add_(hist_fn[:r], alpha=BINS).long().flatten()  # (r W,)
            self.hist.scatter_add_(0, key, sel[:r].flatten().to(dt))
        else:  # a fractional false negative splits its pair between the two halves
            key = b.long().flatten()  # (r W,)
            part = hist_fn[:r].flatten().to(dt)  # (r W,)
            self.hist[BINS:].scatter_add_(0, key, part)
            self.hist[:BINS].scatter_add_(0, key, sel[:r].flatten().to(dt) - part)

    def _totals(self) -> Tensor:
        """(7,) float64 on the host: pairs, FN, W, WFN, similarity sum, collisions, anchors."""
        c = self.counts.tolist()
        f = self.sums.tolist()
        return torch.tensor([c[_PAIRS], c[_FN] + f[_FNF], f[_W] + c[_UPAIRS],
                             f[_WFN] + c[_UFN], f[_SIM], c[_COLL], self.anchors],
                            dtype=torch.float64)

    @staticmethod
    def _ratios(a: list[float]) -> dict[str, float]:
        pairs, fn, w, wfn, sim, coll, anchors = a

        def div(x: float, y: float) -> float:
            return x / y if y > 0 else float("nan")

        return {
            "fnr": div(fn, pairs),
            "fnr_weighted": div(wfn, w),
            "hardness": div(sim, pairs),
            "collisions_per_anchor": div(coll, anchors),
            "negatives_per_anchor": div(pairs, anchors),
        }

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """(since the last snapshot, whole run so far). Syncs with the device."""
        total = self._totals()
        interval = self._ratios((total - self._prev).tolist())
        self._prev = total
        return interval, self._ratios(total.tolist())

    def deciles(self) -> dict[str, list[float]]:
        """Hardness decile edges (similarity) and the FNR within each decile."""
        h = self.hist.to("cpu", torch.float64, copy=True)
        fn = h[BINS:]
        count = h[:BINS] + fn
        n = float(count.sum())
        if n == 0:
            return {"edges": [], "fnr": []}
        cum = torch.cumsum(count, 0) / n  # (BINS,)
        dec = torch.clamp((cum * 10).ceil().long() - 1, 0, 9)  # decile of each bin's upper end
        edges, fnr = [], []
        centers = torch.linspace(-1, 1, BINS + 1)[1:]
        for d in range(10):
            m = dec == d
            c = float(count[m].sum())
            fnr.append(float(fn[m].sum()) / c if c > 0 else float("nan"))
            edges.append(float(centers[m].max()) if m.any() else float("nan"))
        return {"edges": edges, "fnr": fnr}
