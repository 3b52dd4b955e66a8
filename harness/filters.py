"""A false-negative filter that composes with any strategy (``--set strategy.fn_filter=NAME``).

After a strategy has selected its negatives, the filter drops the selected candidates its rule
takes for false negatives, in whichever form the selection is (a mask over a shared pool, an
index per anchor, per-anchor extras: :meth:`~negbench.strategies.Negatives.restrict`). So
"semi-hard x self-guided" or "dynamic x positive-aware" is one run, and an ablation spec sweeps
``strategy.fn_filter`` beside its strategies. The rules use the same defaults as the strategies
of the same name:

- ``self-guided``: drop s_n > s_p + 0.1 (GISTEmbed's guide rule with the encoder as its guide);
- ``positive-aware``: keep only s_n < 0.95 s_p (NV-Retriever's TopK-PercPos);
- ``oracle``: drop every candidate of the anchor's class (a synthesized candidate when half or
  more of its label sources are); it reads the labels, so the run is an oracle reference;
- ``none``: the strategy's selection as it is.

Each step's counts stay on the device (no host sync): candidates removed, removed ones that
were false negatives, and false negatives selected before the filter. A run's metrics give
``filter_removed`` (removed candidates per anchor), ``filter_precision`` (the share of the
removed that were false negatives) and ``filter_recall`` (the share of the selected false
negatives it removed), from the oracle labels, as every false-negative figure is.

NOTE: FNC's support-set rule is not offered as a filter: it needs the candidates' embeddings,
which virtual extras (MoCHi's mixes) do not have; the ``fnc`` strategy applies it to the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from negbench.strategies import Negatives
from negbench.strategies.kernels import below_positive, not_above_positive
from negbench.strategies.positive_aware import PositiveAwareConfig
from negbench.strategies.self_guided import SelfGuidedConfig

FILTERS = ("none", "positive-aware", "self-guided", "oracle")


def _kept_by_rule(negs: Negatives, name: str) -> Tensor:
    """(A, W) bool: the candidates the score rule ``name`` keeps, with the defaults of the
    strategy of that name (strategies/self_guided.py, strategies/positive_aware.py)."""
    s = negs.similarity().detach()  # (A, W)
    s_pos = (negs.anchors * negs.positives).sum(-1).detach()  # (A,)
    if name == "self-guided":
        return not_above_positive(s, s_pos, SelfGuidedConfig().margin)
    if name == "positive-aware":
        d = PositiveAwareConfig()
        return below_positive(s, s_pos, d.absolute, d.relative)
    raise ValueError(f"unknown fn_filter {name!r}; allowed: {', '.join(FILTERS)}")


def apply_filter(negs: Negatives, name: str, label_of: Tensor) -> tuple[Negatives, Tensor]:
    """The selection less what the filter ``name`` removes, and this step's (3,) int64 counts
    on the device: removed, removed false negatives, false negatives selected before the
    filter. ``label_of``: the label of each dataset id, with one more entry at the end for id -1
    (the meter's ``label_of``)."""
    if negs.sim is None and name != "oracle":  # once, with its gradients: the objective
        negs.sim = negs.similarity()  # reuses it (A, W)
    with torch.no_grad():
        sel = negs.selected()  # (A, W)
        match = negs.label_match(label_of)  # (A, W) bool, or shares for synthesized candidates
        fn = match if match.dtype == torch.bool else match >= 0.5  # (A, W) same class
        drop = sel & (fn if name == "oracle" else ~_kept_by_rule(negs, name))  # (A, W)
        counts = torch.stack([torch.count_nonzero(drop), torch.count_nonzero(drop & fn),
                              torch.count_nonzero(fn & sel)])
        keep = sel & ~drop
    return negs.restrict(keep), counts


def filter_metrics(counts: Tensor, anchors: int) -> dict[str, float]:
    """The run's filter metrics from its summed counts (one host sync, at the end)."""
    removed, removed_fn, fn_before = (float(v) for v in counts.tolist())

    def div(x: float, y: float) -> float:
        return x / y if y > 0 else float("nan")

    return {"filter_removed": div(removed, anchors), "filter_precision": div(removed_fn, removed),
            "filter_recall": div(removed_fn, fn_before)}
