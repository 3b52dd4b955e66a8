"""How a report prints its numbers: the metrics it shows (header with unit, scale, format), one
number, interval or p-value as a table cell, and the tables and figures a report is made of.

Also the few helpers on a runs frame that every part of a section reads (a metric's finite
values, by seed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from negbench.reports import stats

REFERENCE = "in-batch"  # the baseline every strategy is tested against
NO_LABELS = "n/a: no labels"  # a label-based figure of a suite without labels
DECILES = 10


@dataclass(frozen=True)
class Metric:
    key: str
    header: str  # with its unit
    scale: float = 1.0  # printed value = scale * tracked value
    fmt: str = "f2"  # f<d>: d decimals; g3: 3 significant digits; int: grouped integer


ACCURACY = (Metric("knn_acc", "kNN accuracy (%)", 100.0),
            Metric("linear_acc", "linear accuracy (%)", 100.0))
SUITE_OWN = {  # suite-specific quality metrics, ranked beside the accuracies when present
    "retrieval_r1": Metric("retrieval_r1", "retrieval R@1 (%)", 100.0),
    "retrieval_r10": Metric("retrieval_r10", "retrieval R@10 (%)", 100.0),
    "retrieval_mrr": Metric("retrieval_mrr", "retrieval MRR", 1.0, "f4"),
    "stsb_spearman": Metric("stsb_spearman", "STS-B Spearman", 1.0, "f4"),
}
SUITE_OWN_PREFIXES = ("retrieval_", "stsb_")
COST = (Metric("fnr", "FNR (%)", 100.0), Metric("fnr_weighted", "weighted FNR (%)", 100.0),
        Metric("hardness", "hardness (cos)", 1.0, "f3"),
        # a false-negative filter's work (only in sections where a run has one): candidates it
        # removed per anchor, and how many of those were same-class (precision) and how many of
        # the selection's same-class candidates it removed (recall), against the oracle labels
        Metric("filter_removed", "filter: removed per anchor", 1.0, "f2"),
        Metric("filter_precision", "filter precision (%)", 100.0, "f1"),
        Metric("filter_recall", "filter recall (%)", 100.0, "f1"),
        Metric("wall_seconds", "wall-clock (s)", 1.0, "f2"),
        Metric("flops", "FLOPs", 1.0, "g3"),
        Metric("samples_per_second", "samples/s", 1.0, "int"),
        Metric("peak_mem_mb", "peak memory (MB)", 1.0, "int"),
        Metric("peak_cuda_mb", "peak CUDA memory (MB)", 1.0, "int"))
PARETO_COSTS = (("flops", "FLOPs"), ("wall_seconds", "wall-clock"))


# --------------------------------------------------------------------------- formatting
def fmt(v: float | None, f: str = "f2", scale: float = 1.0, sign: bool = False) -> str:
    """One number as a table prints it ('–' when missing)."""
    if v is None or not math.isfinite(float(v)):
        return "–"
    x = float(v) * scale
    if sign:  # no "-0.00": a value that rounds to zero prints as +0.00
        d = 0 if f == "int" else (int(f[1:]) if f.startswith("f") else None)
        if d is not None and round(x, d) == 0:
            x = 0.0
    if f == "int":
        return f"{x:+,.0f}" if sign else f"{x:,.0f}"
    if f == "g3":
        return f"{x:+.3g}" if sign else f"{x:.3g}"
    d = int(f[1:])
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_interval(iv: stats.Interval, m: Metric, mark_single: bool = True) -> str:
    """``mean ± half-width``; one seed: the value and that no interval can be given (said once
    in the table's note instead, with ``mark_single`` False, when every row has one seed)."""
    if iv.n == 0:
        return "–"
    if iv.half is None:
        value = fmt(iv.mean, m.fmt, m.scale)
        return f"{value} (1 seed: no interval)" if mark_single else value
    if iv.half == 0:
        return f"{fmt(iv.mean, m.fmt, m.scale)} ± {fmt(0.0, m.fmt)} ({iv.n} equal values)"
    return f"{fmt(iv.mean, m.fmt, m.scale)} ± {fmt(iv.half, m.fmt, m.scale)}"


def fmt_items(iv: stats.ItemInterval, m: Metric) -> str:
    """``mean [low, high]``: the exact binomial interval with one seed, else the hierarchical
    bootstrap's."""
    low, high = iv.exact if iv.exact else (iv.low, iv.high)
    return f"{fmt(iv.mean, m.fmt, m.scale)} [{fmt(low, m.fmt, m.scale)}, " \
           f"{fmt(high, m.fmt, m.scale)}]"


def fmt_accuracy(items: stats.ItemInterval | None, iv: stats.Interval, m: Metric,
                 mark_single: bool) -> str:
    """An accuracy cell: over the test items where the runs have per-item results, else over
    seeds."""
    return fmt_items(items, m) if items is not None else fmt_interval(iv, m, mark_single)


def items_dict(iv: stats.ItemInterval) -> dict:
    low, high = iv.exact if iv.exact else (iv.low, iv.high)
    return iv.as_dict() | {"shown": [low, high], "kind": "exact binomial (Clopper-Pearson)"
                           if iv.exact else "hierarchical bootstrap over seeds and items"}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "x"


def p_words(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def significance(p: stats.Paired) -> str:
    if not p.ok:
        return p.reason
    verdict = "significant" if p.p < 0.05 else "not significant"
    return (f"{p.test} over {p.n} seeds: p {p_words(p.p)}, {verdict} at the "
            f"5% level")


def points(x: float, sign: bool = True) -> str:
    return fmt(x, "f2", 100.0, sign)


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# --------------------------------------------------------------------------- tables, figures
@dataclass
class Table:
    key: str  # ranking, paired, cost, tuned, deciles, audit, failed, provenance
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    align: list[str] = field(default_factory=list)  # 'l' or 'r' per column

    def __post_init__(self):
        if not self.align:
            self.align = ["l"] + ["r"] * (len(self.headers) - 1)


@dataclass
class Figure:
    kind: str  # pareto, acc_fnr, curves, deciles
    file: str  # a PNG beside the report
    caption: str


# --------------------------------------------------------------------------- the runs frame
def finite_values(df: pd.DataFrame, key: str) -> list[float]:
    if key not in df.columns:
        return []
    return [float(v) for v in df[key] if v is not None and math.isfinite(float(v))]


def per_seed(df: pd.DataFrame, key: str) -> dict[int, float]:
    if key not in df.columns:
        return {}
    return {int(s): float(v) for s, v in zip(df["seed"], df[key], strict=True)
            if v is not None and math.isfinite(float(v))}


def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def suite_metrics(df: pd.DataFrame) -> list[Metric]:
    out = []
    for c in df.columns:
        if c in SUITE_OWN or (c.startswith(SUITE_OWN_PREFIXES) and c not in SUITE_OWN):
            if df[c].notna().any():
                out.append(SUITE_OWN.get(c, Metric(c, c, 1.0, "f4")))
    return sorted(out, key=lambda m: (list(SUITE_OWN).index(m.key) if m.key in SUITE_OWN
                                      else len(SUITE_OWN), m.key))
