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
  the pairs of the first 64 anchors of each step (the batch is a random draw, so these are a
  random sample of the step's pairs); FNR and hardness themselves count every pair.

Everything accumulates in device tensors; :meth:`NegativeMeter.snapshot` is the only host sync
and the harness calls it at log intervals.
"""

from __future__ import annotations

import torch
from torch import Tensor

from strategies import Negatives

BINS = 1000  # similarity histogram over [-1, 1] for the hardness deciles
HIST_ANCHORS = 64  # anchors per step whose pairs enter that histogram

# accumulator slots
_PAIRS, _FN, _W, _WFN, _SIM, _COLL, _ANCH = range(7)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def false_negative_matrix(negs: Negatives, labels: Tensor) -> Tensor:
    """(A, P|K) in [0, 1]: how much each candidate shares the anchor's label (1 or 0 for real
    candidates; the weighted share of its label sources for synthesized ones)."""
    la = labels[negs.anchor_ids]  # (A,)
    if negs.sources is None and negs.extra_sources is None:
        cid = negs.candidate_ids()  # (1, P) or (A, W)
        return ((la[:, None] == labels[cid.clamp_min(0)]) & (cid >= 0)).to(negs.pool.dtype)
    src, sw = negs.label_sources()  # (1|A, P|K, R)
    sw = sw.to(negs.pool.dtype) * (src >= 0)
    same = (la[:, None, None] == labels[src.clamp_min(0)]).to(sw.dtype)  # (A, P|K, R)
    return (same * sw).sum(-1) / sw.sum(-1).clamp_min(1e-12)  # (A, P|K)


class NegativeMeter:
    def __init__(self, labels: Tensor):
        self.labels = labels  # (N_train,) on the run's device
        dev = labels.device
        self.dtype = _acc_dtype(dev)
        self.acc = torch.zeros(7, dtype=self.dtype, device=dev)
        self.hist = torch.zeros(2, BINS, dtype=self.dtype, device=dev)  # (count, fn) per bin
        self._prev = torch.zeros(7, dtype=torch.float64)  # host copy at the last snapshot

    @torch.no_grad()
    def observe(self, negs: Negatives, sim: Tensor) -> None:
        """Account one step's selection; ``sim`` is the (A, P|K) cosine similarity matrix."""
        dt = self.dtype
        sel = negs.selected()  # (A, P|K) bool
        weights = negs.candidate_weights()
        own = negs.own_instance() & (negs.candidate_rows() >= negs.batch_views)  # (A, P|K)
        n_anchors = torch.tensor(negs.num_anchors, dtype=dt, device=sel.device)
        if negs.sources is None and negs.extra_sources is None:
            # real candidates only: every pair is a false negative or not, so counts of bools
            # (no float (A, P) copies); weights, when given, are summed over the same masks
            la = self.labels[negs.anchor_ids]  # (A,)
            cid = negs.candidate_ids()  # (1, P) or (A, W)
            fn_sel = (la[:, None] == self.labels[cid.clamp_min(0)]) & (cid >= 0) & sel  # (A, W)
            pairs = torch.count_nonzero(sel).to(dt)
            fns = torch.count_nonzero(fn_sel).to(dt)
            if weights is None:
                w_sum, wfn_sum = pairs, fns
            else:
                w = weights.to(sim.dtype) * sel  # (A, W)
                w_sum, wfn_sum = w.sum(dtype=dt), (w * fn_sel).sum(dtype=dt)
            hist_fn = fn_sel
        else:
            fn = false_negative_matrix(negs, self.labels)  # (A, P|K) in [0, 1]
            self_sel = sel.to(fn.dtype)
            w = self_sel if weights is None else self_sel * weights.to(fn.dtype)
            fn_f = fn * self_sel
            pairs, fns = self_sel.sum(dtype=dt), fn_f.sum(dtype=dt)
            w_sum, wfn_sum = w.sum(dtype=dt), (fn * w).sum(dtype=dt)
            hist_fn = fn_f
        step = torch.stack([
            pairs, fns, w_sum, wfn_sum,
            (sim * sel).sum(dtype=dt),
            torch.count_nonzero(own).to(dt),
            n_anchors,
        ])
        self.acc += step
        # FNR by hardness decile: from the first HIST_ANCHORS anchors of each step (a random
        # batch, so an unbiased sample of the pairs), which keeps the histogram's cost flat in A
        r = min(sel.shape[0], HIST_ANCHORS)
        # via int32: a float -> int64 conversion costs 20x more on some CPUs
        b = ((sim[:r] + 1.0) * (0.5 * BINS)).to(torch.int32).clamp_(0, BINS - 1).long()  # (r, W)
        self.hist[0].scatter_add_(0, b.flatten(), sel[:r].flatten().to(dt))
        self.hist[1].scatter_add_(0, b.flatten(), hist_fn[:r].flatten().to(dt))

    @staticmethod
    def _ratios(a: Tensor) -> dict[str, float]:
        def div(x: float, y: float) -> float:
            return x / y if y > 0 else float("nan")

        return {
            "fnr": div(a[_FN], a[_PAIRS]),
            "fnr_weighted": div(a[_WFN], a[_W]),
            "hardness": div(a[_SIM], a[_PAIRS]),
            "collisions_per_anchor": div(a[_COLL], a[_ANCH]),
            "negatives_per_anchor": div(a[_PAIRS], a[_ANCH]),
        }

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """(since the last snapshot, whole run so far). Syncs with the device."""
        total = self.acc.to("cpu", torch.float64, copy=True)  # copy: on a CPU run .to() aliases
        interval = self._ratios((total - self._prev).tolist())
        self._prev = total
        return interval, self._ratios(total.tolist())

    def deciles(self) -> dict[str, list[float]]:
        """Hardness decile edges (similarity) and the FNR within each decile."""
        h = self.hist.to("cpu", torch.float64, copy=True)
        count, fn = h[0], h[1]
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
