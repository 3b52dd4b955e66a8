"""The run contract: what a run records beyond its accuracies, read back for a section.

Older runs lack some or all of it; each part then reports as "not recorded": a run's
representation health as tags, its floors as metrics, and its per-item correctness as the
frame's ITEM_COLUMNS (from its items.json). ``section_runs`` splits a section's runs by
variant into the three roles a report gives them: ranked, oracle reference, did not train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from negbench.harness.tags import HEALTH_REASON_TAG, HEALTH_TAG, LABELS_TAG, ORACLE_TAG
from negbench.reports import stats
from negbench.reports.data import ITEM_COLUMNS
from negbench.reports.format import (
    ACCURACY,
    NO_LABELS,
    SUITE_OWN,
    Metric,
    finite_values,
    fmt_accuracy,
    mean,
    per_seed,
    plural,
    points,
    suite_metrics,
)

UNLABELLED_RANK = "retrieval_mrr"  # what ranks a section without labels
ORACLE_NAMES = ("fn-free", "supcon")  # oracle references when a run carries no ORACLE_TAG
FN_FREE = "fn-free"
COLLAPSED, DEGRADED, OK = "collapsed", "degraded", "ok"
NOT_RECORDED = "not recorded"
FLOOR_OF = {"knn_acc": "floor_knn_acc", "linear_acc": "floor_linear_acc",
            "retrieval_r1": "floor_retrieval_r1", "retrieval_r10": "floor_retrieval_r10",
            "retrieval_mrr": "floor_retrieval_mrr", "uniform": "floor_uniform",
            "rankme": "floor_rankme", "align": "floor_align"}
RAW_KNN = "raw_knn_acc"
HEALTH_METRICS = {"uniform": Metric("uniform", "uniformity", 1.0, "f3"),
                  "rankme": Metric("rankme", "RankMe", 1.0, "f2"),
                  "align": Metric("align", "alignment", 1.0, "f3")}
FLOOR_ROWS = (*ACCURACY, SUITE_OWN["retrieval_r1"], SUITE_OWN["retrieval_r10"],
              SUITE_OWN["retrieval_mrr"], *HEALTH_METRICS.values())


def run_tags(g: pd.DataFrame) -> list[dict]:
    if "tags" not in g.columns:
        return [{} for _ in range(len(g))]
    return [t if isinstance(t, dict) else {} for t in g["tags"]]


def run_health(g: pd.DataFrame) -> list[tuple[int, str, str]]:
    """(seed, verdict, reason) of each run of ``g``, by seed; NOT_RECORDED without the tag."""
    out = []
    for s, t in zip(g["seed"], run_tags(g), strict=True):
        h = str(t.get(HEALTH_TAG, "")).strip().lower() or NOT_RECORDED
        out.append((int(s), h, str(t.get(HEALTH_REASON_TAG, "")).strip()))
    return sorted(out)


def is_oracle(g: pd.DataFrame) -> bool:
    """An oracle reference: a run tagged ``negbench.oracle`` = "1" (or, where no run of the
    variant carries the tag, a strategy named in ORACLE_NAMES)."""
    tagged = [str(t[ORACLE_TAG]).strip() for t in run_tags(g) if ORACLE_TAG in t]
    if tagged:
        return "1" in tagged
    return str(g["strategy"].iloc[0]) in ORACLE_NAMES


@dataclass(frozen=True)
class Items:
    """One variant's per-item correctness on one split: {seed: (N,) bool}."""

    split: str
    n: int
    vectors: dict


def item_vectors(g: pd.DataFrame, metric: str) -> Items | None:
    """The per-item correctness of every run of ``g`` for ``metric`` (knn_acc, linear_acc), or
    None unless every run has it, of one length, on one split."""
    import numpy as np

    col = ITEM_COLUMNS.get(metric)
    if col is None or col not in g.columns or g.empty:
        return None
    splits = list(g["items_split"]) if "items_split" in g.columns else [None] * len(g)
    out = {}
    for s, bits in zip(g["seed"], g[col], strict=True):
        if not isinstance(bits, str) or not bits or set(bits) - {"0", "1"}:
            return None
        out[int(s)] = np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")
    names = {x if isinstance(x, str) and x else "test" for x in splits}
    lengths = {len(v) for v in out.values()}
    if len(names) != 1 or len(lengths) != 1:
        return None
    return Items(names.pop(), lengths.pop(), out)


def health_cell(h: list[tuple[int, str, str]]) -> str:
    """The ranking's health of a variant's runs: ok, degraded (with its reasons), or not
    recorded."""
    n = len(h)
    deg = [x for x in h if x[1] == DEGRADED]
    ok = [x for x in h if x[1] == OK]
    other = sorted({x[1] for x in h} - {DEGRADED, OK, NOT_RECORDED})
    missing = sum(1 for x in h if x[1] == NOT_RECORDED)
    if deg:
        reasons = "; ".join(dict.fromkeys(r for _, _, r in deg if r)) or "no reason recorded"
        return f"degraded ({len(deg)} of {plural(n, 'seed', 'seeds')}): {reasons}"
    if other:
        return ", ".join(other)
    if ok and not missing:
        return OK
    if ok:
        return f"ok ({len(ok)} of {plural(n, 'seed', 'seeds')}; {missing} not recorded)"
    return NOT_RECORDED


def section_floors(df: pd.DataFrame) -> dict:
    """Each floor recorded by the section's runs: its mean over seeds (each seed's value the
    mean of its runs, which should agree), the seeds, and the largest spread within a seed."""
    out = {}
    for key in (*FLOOR_OF.values(), RAW_KNN):
        per: dict[int, list[float]] = {}
        if key in df.columns:
            for s, v in zip(df["seed"], df[key], strict=True):
                if v is not None and math.isfinite(float(v)):
                    per.setdefault(int(s), []).append(float(v))
        if not per:
            continue
        by_seed = {s: mean(vs) for s, vs in sorted(per.items())}
        out[key] = {"mean": mean(list(by_seed.values())), "seeds": sorted(by_seed),
                    "by_seed": by_seed,
                    "spread_within_seed": max(max(vs) - min(vs) for vs in per.values())}
    return out


def floor_margin(g: pd.DataFrame) -> dict | None:
    """kNN accuracy − its floor, run by run (same seed): the mean margin and the seeds whose
    run is not above its floor; None when no run recorded both."""
    acc, floor = per_seed(g, "knn_acc"), per_seed(g, FLOOR_OF["knn_acc"])
    seeds = sorted(acc.keys() & floor.keys())
    if not seeds:
        return None
    d = {s: acc[s] - floor[s] for s in seeds}
    return {"mean": mean(list(d.values())), "by_seed": d, "seeds": seeds,
            "not_above": [s for s in seeds if d[s] <= 0]}


def floor_cell(fm: dict | None) -> str:
    if fm is None:
        return NOT_RECORDED
    cell = points(fm["mean"])
    if fm["not_above"]:
        cell += (f" — NOT above the floor ({len(fm['not_above'])} of "
                 f"{plural(len(fm['seeds']), 'seed', 'seeds')}): learned nothing")
    return cell


# --------------------------------------------------------------------------- a section's runs
@dataclass
class SectionRuns:
    """A section's finished runs (one per variant and seed) by variant, with what every part
    of the section reads: intervals, per-item intervals, health, floor margins and roles."""

    df: pd.DataFrame
    groups: dict[str, pd.DataFrame]  # variant -> its runs, by seed
    ranked_metrics: list[Metric]  # the accuracies, then the suite's own metrics
    intervals: dict  # variant -> metric -> stats.Interval over seeds
    item_iv: dict  # variant -> accuracy -> stats.ItemInterval, or None without items
    health: dict  # variant -> run_health
    collapsed: dict  # variant -> its collapsed seeds
    everyone: list[str]  # every variant, best mean kNN accuracy first
    did_not_train: list[str]  # any seed collapsed; best mean kNN accuracy first
    oracles: list[str]  # oracle references that trained
    order: list[str]  # ranked: the others, best mean kNN accuracy first
    by_items: bool  # a ranked strategy or oracle reference has per-item results
    n_items: list[int]  # the lengths of the per-item results
    health_recorded: bool
    margins: dict  # variant -> floor_margin
    floors_recorded: bool
    labelled: bool = True  # False: no labels, no kNN/linear/FNR; ranked by UNLABELLED_RANK

    @property
    def listed(self) -> list[str]:
        """The rows of the cost and decile tables: ranked, then oracles, then did not train."""
        return [*self.order, *self.oracles, *self.did_not_train]

    def label(self, v: str) -> str:
        return v if v in self.order else f"{v} (oracle reference)" if v in self.oracles \
            else f"{v} (did not train)"

    def acc_cell(self, v: str, m: Metric, mark_single: bool) -> str:
        if not self.labelled and m in ACCURACY:
            return NO_LABELS
        return fmt_accuracy(self.item_iv[v].get(m.key), self.intervals[v][m.key], m,
                            mark_single)


def section_runs(df: pd.DataFrame) -> SectionRuns:
    groups = {v: g.sort_values("seed") for v, g in df.groupby("variant", sort=False)}
    ranked_metrics = [*ACCURACY, *suite_metrics(df)]
    intervals = {v: {m.key: stats.mean_ci(finite_values(g, m.key)) for m in ranked_metrics}
                 for v, g in groups.items()}
    health = {v: run_health(g) for v, g in groups.items()}
    collapsed = {v: [s for s, h, _ in health[v] if h == COLLAPSED] for v in groups}

    labelled = not all(t.get(LABELS_TAG) == "none" for t in df["tags"])
    rank = "knn_acc" if labelled else UNLABELLED_RANK

    def knn_key(v: str) -> tuple:
        m = intervals[v].get(rank, stats.mean_ci([])).mean
        return (0, -m, v) if math.isfinite(m) else (1, 0.0, v)

    everyone = sorted(groups, key=knn_key)
    did_not_train = [v for v in everyone if collapsed[v]]
    oracles = [v for v in everyone if v not in did_not_train and is_oracle(groups[v])]
    order = [v for v in everyone if v not in did_not_train and v not in oracles]
    items = {v: {m.key: item_vectors(groups[v], m.key) for m in ACCURACY} for v in groups}
    item_iv = {v: {k: (stats.item_interval(it.vectors) if it else None)
                   for k, it in items[v].items()} for v in groups}
    by_items = any(items[v]["knn_acc"] for v in [*order, *oracles])
    n_items = sorted({it.n for v in groups for it in items[v].values() if it})
    health_recorded = any(h != NOT_RECORDED for v in groups for _, h, _ in health[v])
    margins = {v: floor_margin(groups[v]) for v in groups}
    floors_recorded = any(margins[v] is not None for v in groups)
    return SectionRuns(df, groups, ranked_metrics, intervals, item_iv, health, collapsed,
                       everyone, did_not_train, oracles, order, by_items, n_items, health_recorded,
                       margins, floors_recorded, labelled)
