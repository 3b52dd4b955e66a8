"""From an experiment's runs to a report: sections (one per suite and budget), their tables as
formatted text, their numbers as plain data (``report.json``), and headlines in words.

Every number a table prints is computed here, once, from the runs frame (final metrics as
mlflow returns them); the renderers only lay the tables out.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from negbench.reports import stats
from negbench.reports.data import COMMAND_TAG, ITEM_COLUMNS, Runs, latest_per_seed

REFERENCE = "in-batch"  # the baseline every strategy is tested against
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


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "x"


def _p_words(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def significance(p: stats.Paired) -> str:
    if not p.ok:
        return p.reason
    verdict = "significant" if p.p < 0.05 else "not significant"
    return (f"{p.test} over {p.n} seeds: p {_p_words(p.p)}, {verdict} at the "
            f"5% level")


# --------------------------------------------------------------------------- the model
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


@dataclass
class Section:
    suite: str
    budget: str
    slug: str
    title: str
    runs: pd.DataFrame  # finished runs, one per (variant, seed)
    order: list[str]  # variants, best mean kNN accuracy first
    headline: str  # **bold** marks the winner
    notes: list[str]
    tables: list[Table]
    data: dict
    figures: list[Figure] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # floors, headroom: lines under the headline


@dataclass
class Report:
    experiment: str
    uri: str
    generated: str
    sections: list[Section]
    tables: list[Table]  # audit, failed, provenance
    notes: list[str]
    data: dict


def _values(df: pd.DataFrame, key: str) -> list[float]:
    if key not in df.columns:
        return []
    return [float(v) for v in df[key] if v is not None and math.isfinite(float(v))]


def _by_seed(df: pd.DataFrame, key: str) -> dict[int, float]:
    if key not in df.columns:
        return {}
    return {int(s): float(v) for s, v in zip(df["seed"], df[key], strict=True)
            if v is not None and math.isfinite(float(v))}


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def suite_metrics(df: pd.DataFrame) -> list[Metric]:
    out = []
    for c in df.columns:
        if c in SUITE_OWN or (c.startswith(SUITE_OWN_PREFIXES) and c not in SUITE_OWN):
            if df[c].notna().any():
                out.append(SUITE_OWN.get(c, Metric(c, c, 1.0, "f4")))
    return sorted(out, key=lambda m: (list(SUITE_OWN).index(m.key) if m.key in SUITE_OWN
                                      else len(SUITE_OWN), m.key))


# --------------------------------------------------------------------------- the run contract
# What a run records beyond its accuracies (older runs lack some or all of it; each part then
# reports as "not recorded"): its representation health as tags, its floors as metrics, and
# per-item correctness as the frame's ITEM_COLUMNS (from its items.json).
HEALTH_TAG = "negbench.health"
HEALTH_REASON_TAG = "negbench.health_reason"
ORACLE_TAG = "negbench.oracle"
ORACLE_NAMES = ("fn-free", "supcon")  # oracle references when a run carries no ORACLE_TAG
FN_FREE = "fn-free"
COLLAPSED, DEGRADED, OK = "collapsed", "degraded", "ok"
NOT_RECORDED = "not recorded"
ALPHA = round(1 - stats.LEVEL, 12)  # the family-wise level of a section's comparisons
POWER = 0.8  # of the smallest detectable difference
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


def _tags(g: pd.DataFrame) -> list[dict]:
    if "tags" not in g.columns:
        return [{} for _ in range(len(g))]
    return [t if isinstance(t, dict) else {} for t in g["tags"]]


def run_health(g: pd.DataFrame) -> list[tuple[int, str, str]]:
    """(seed, verdict, reason) of each run of ``g``, by seed; NOT_RECORDED without the tag."""
    out = []
    for s, t in zip(g["seed"], _tags(g), strict=True):
        h = str(t.get(HEALTH_TAG, "")).strip().lower() or NOT_RECORDED
        out.append((int(s), h, str(t.get(HEALTH_REASON_TAG, "")).strip()))
    return sorted(out)


def is_oracle(g: pd.DataFrame) -> bool:
    """An oracle reference: a run tagged ``negbench.oracle`` = "1" (or, where no run of the
    variant carries the tag, a strategy named in ORACLE_NAMES)."""
    tagged = [str(t[ORACLE_TAG]).strip() for t in _tags(g) if ORACLE_TAG in t]
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


@dataclass
class Comparison:
    """``variant`` − the reference in ``metric`` (an accuracy share, not points): on the same
    test items where both have per-item results (stats.paired_items), else over seeds
    (stats.paired_t, kept in ``seed_test``); ``p_holm`` is set over the section's family."""

    variant: str
    metric: str
    seeds: int
    items: int | None  # test items per seed; None: compared over seeds alone
    diff: float
    low: float
    high: float
    se: float
    p: float
    test: str
    reason: str | None = None
    p_holm: float = math.nan
    seed_test: stats.Paired | None = None

    @property
    def tested(self) -> bool:
        return math.isfinite(self.p)

    @property
    def beyond_noise(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm < ALPHA

    def describe(self) -> str:
        """The test in words: which, on what."""
        if self.items is None:
            return f"{self.test} over {self.seeds} seeds"
        if self.seeds == 1:
            return f"{self.test} on {self.items} test items, 1 seed"
        if self.test.startswith("paired bootstrap"):
            return f"paired bootstrap over {self.seeds} seeds and {self.items} test items"
        return f"{self.test} ({self.seeds} seeds, {self.items} test items)"

    def as_dict(self) -> dict:
        return {"variant": self.variant, "metric": self.metric, "seeds": self.seeds,
                "items": self.items, "diff": self.diff, "low": self.low, "high": self.high,
                "se": self.se, "p": self.p, "p_holm": self.p_holm, "test": self.test,
                "basis": "seeds" if self.items is None else "items", "reason": self.reason,
                "beyond_noise": self.beyond_noise, "level": stats.LEVEL}


def compare(variant: str, a: pd.DataFrame, b: pd.DataFrame, metric: str) -> Comparison:
    """``a`` − ``b`` in ``metric``, paired on the same test items when both have per-item
    results for a seed in common, else the seed-based paired t-test."""
    ia, ib = item_vectors(a, metric), item_vectors(b, metric)
    if (ia and ib and ia.split == ib.split and ia.n == ib.n
            and ia.vectors.keys() & ib.vectors.keys()):
        r = stats.paired_items(ia.vectors, ib.vectors)
        return Comparison(variant, metric, r.seeds, r.items, r.mean_diff, r.low, r.high, r.se,
                          r.p, r.test)
    p = stats.paired_t(_by_seed(a, metric), _by_seed(b, metric))
    se = p.sd / math.sqrt(p.n) if p.sd and p.n >= 2 else math.nan
    nan = math.nan
    return Comparison(variant, metric, p.n, None, p.mean_diff, nan if p.low is None else p.low,
                      nan if p.high is None else p.high, se, p.p if p.ok else nan,
                      stats.PAIRED_TEST, p.reason, seed_test=p)


def fmt_items(iv: stats.ItemInterval, m: Metric) -> str:
    """``mean [low, high]``: the exact binomial interval with one seed, else the hierarchical
    bootstrap's."""
    low, high = iv.exact if iv.exact else (iv.low, iv.high)
    return f"{fmt(iv.mean, m.fmt, m.scale)} [{fmt(low, m.fmt, m.scale)}, " \
           f"{fmt(high, m.fmt, m.scale)}]"


def _items_dict(iv: stats.ItemInterval) -> dict:
    low, high = iv.exact if iv.exact else (iv.low, iv.high)
    return iv.as_dict() | {"shown": [low, high], "kind": "exact binomial (Clopper-Pearson)"
                           if iv.exact else "hierarchical bootstrap over seeds and items"}


def _points(x: float, sign: bool = True) -> str:
    return fmt(x, "f2", 100.0, sign)


def _ci_points(c: Comparison) -> str:
    if not (math.isfinite(c.low) and math.isfinite(c.high)):
        return "–"
    return f"[{_points(c.low)}, {_points(c.high)}]"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


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
        return f"degraded ({len(deg)} of {_plural(n, 'seed', 'seeds')}): {reasons}"
    if other:
        return ", ".join(other)
    if ok and not missing:
        return OK
    if ok:
        return f"ok ({len(ok)} of {_plural(n, 'seed', 'seeds')}; {missing} not recorded)"
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
        by_seed = {s: _mean(vs) for s, vs in sorted(per.items())}
        out[key] = {"mean": _mean(list(by_seed.values())), "seeds": sorted(by_seed),
                    "by_seed": by_seed,
                    "spread_within_seed": max(max(vs) - min(vs) for vs in per.values())}
    return out


def floor_margin(g: pd.DataFrame) -> dict | None:
    """kNN accuracy − its floor, run by run (same seed): the mean margin and the seeds whose
    run is not above its floor; None when no run recorded both."""
    acc, floor = _by_seed(g, "knn_acc"), _by_seed(g, FLOOR_OF["knn_acc"])
    seeds = sorted(acc.keys() & floor.keys())
    if not seeds:
        return None
    d = {s: acc[s] - floor[s] for s in seeds}
    return {"mean": _mean(list(d.values())), "by_seed": d, "seeds": seeds,
            "not_above": [s for s in seeds if d[s] <= 0]}


def floor_cell(fm: dict | None) -> str:
    if fm is None:
        return NOT_RECORDED
    cell = _points(fm["mean"])
    if fm["not_above"]:
        cell += (f" — NOT above the floor ({len(fm['not_above'])} of "
                 f"{_plural(len(fm['seeds']), 'seed', 'seeds')}): learned nothing")
    return cell


# --------------------------------------------------------------------------- one section
def build_section(suite: str, budget: str, df: pd.DataFrame) -> Section:
    """One suite and budget: its finished runs (one per variant and seed) ranked, compared
    with in-batch, with floors, oracle references and runs that did not train apart."""
    groups = {v: g.sort_values("seed") for v, g in df.groupby("variant", sort=False)}
    ranked_metrics = [*ACCURACY, *suite_metrics(df)]
    intervals = {v: {m.key: stats.mean_ci(_values(g, m.key)) for m in ranked_metrics}
                 for v, g in groups.items()}
    health = {v: run_health(g) for v, g in groups.items()}
    collapsed = {v: [s for s, h, _ in health[v] if h == COLLAPSED] for v in groups}

    def knn_key(v: str) -> tuple:
        m = intervals[v]["knn_acc"].mean
        return (0, -m, v) if math.isfinite(m) else (1, 0.0, v)

    everyone = sorted(groups, key=knn_key)
    did_not_train = [v for v in everyone if collapsed[v]]
    oracles = [v for v in everyone if v not in did_not_train and is_oracle(groups[v])]
    order = [v for v in everyone if v not in did_not_train and v not in oracles]
    title = f"{suite} · {budget}"
    notes: list[str] = []
    facts: list[str] = []
    tables: list[Table] = []
    data: dict = {"suite": suite, "budget": budget, "order": order, "oracle": oracles,
                  "strategies": {}}

    items = {v: {m.key: item_vectors(groups[v], m.key) for m in ACCURACY} for v in groups}
    item_iv = {v: {k: (stats.item_interval(it.vectors) if it else None)
                   for k, it in items[v].items()} for v in groups}
    by_items = any(items[v]["knn_acc"] for v in [*order, *oracles])
    n_items = sorted({it.n for v in groups for it in items[v].values() if it})

    health_recorded = any(h != NOT_RECORDED for v in groups for _, h, _ in health[v])
    floors = section_floors(df)
    margins = {v: floor_margin(groups[v]) for v in groups}
    floors_recorded = any(margins[v] is not None for v in groups)

    def acc_cell(v: str, m: Metric, mark_single: bool) -> str:
        iv = item_iv[v].get(m.key)
        return fmt_items(iv, m) if iv is not None else \
            fmt_interval(intervals[v][m.key], m, mark_single)

    for v in everyone:
        g = groups[v]
        role = ("did_not_train" if v in did_not_train else "oracle" if v in oracles
                else "ranked")
        data["strategies"][v] = {
            "strategy": str(g["strategy"].iloc[0]), "tuned": str(g["tuned"].iloc[0]),
            "seeds": sorted(int(s) for s in g["seed"]), "run_ids": list(g["run_id"]),
            "role": role,
            "health": [{"seed": s, "verdict": h, "reason": r} for s, h, r in health[v]],
            "floor_margin": margins[v],
            **{m.key: intervals[v][m.key].as_dict() for m in ranked_metrics},
            **{f"{k}_items": _items_dict(iv) for k, iv in item_iv[v].items() if iv}}

    # ranking: trained, non-oracle strategies only
    headers = ["rank", "strategy", "seeds", *(["health"] if health_recorded else []),
               *(m.header for m in ranked_metrics),
               *(["kNN − floor (points)"] if floors_recorded else [])]
    rows = []
    all_single = all(len(groups[v]) == 1 for v in order)
    for i, v in enumerate(order, 1):
        rows.append([str(i), v, str(len(groups[v])),
                     *([health_cell(health[v])] if health_recorded else []),
                     *(acc_cell(v, m, not all_single) for m in ranked_metrics),
                     *([floor_cell(margins[v])] if floors_recorded else [])])
    if by_items:
        per = " and ".join(str(n) for n in n_items)
        note = (f"accuracy: mean [95% interval] over seeds and the {per} test items (one item "
                f"= {', '.join(f'{100 / n:.2f}' for n in n_items)} points): with one seed the "
                "exact binomial (Clopper-Pearson) interval, with several a hierarchical "
                "bootstrap over seeds, then items, that holds both sources of variance. A "
                "figure without per-item results: mean ± half-width of its Student-t interval "
                "over seeds.")
    elif all_single:
        note = "one seed per strategy: the values of single runs; no interval can be given."
    else:
        note = ("mean over seeds ± half-width of its 95% Student-t confidence interval (t with "
                "n − 1 degrees of freedom); with one seed no interval can be given.")
    if health_recorded:
        note += (" health: the run's representation verdict (ok, or degraded with its "
                 "reason); collapsed runs are not ranked.")
    if floors_recorded:
        note += (" kNN − floor: kNN accuracy minus the untrained encoder's on the same split "
                 "and seed; a run not above it learned nothing, whatever its rank.")
    if order:
        tables.append(Table("ranking", "Ranking by kNN accuracy", headers, rows, note=note,
                            align=["r", "l", "r", *(["l"] if health_recorded else []),
                                   *(["r"] * len(ranked_metrics)),
                                   *(["l"] if floors_recorded else [])]))
    if not health_recorded:
        facts.append("Representation health: not recorded by these runs (older runs), so a "
                     "collapsed run cannot be told apart from a weak one.")
    one_seed = [v for v in order if len(groups[v]) == 1]
    if one_seed and not by_items:
        notes.append(("Every strategy has" if len(one_seed) == len(order) else
                      f"{', '.join(one_seed)} {'has' if len(one_seed) == 1 else 'have'}")
                     + " one seed only: no interval can be given, and no test of a difference.")
    not_above = [v for v in order if margins[v] and margins[v]["not_above"]]
    if not_above:
        notes.append(f"{', '.join(not_above)} {'does' if len(not_above) == 1 else 'do'} not "
                     "beat the untrained encoder's kNN accuracy on every seed: ranked, but "
                     "learned nothing there.")

    # floors
    data["floors"] = floors
    if floors:
        ranked_means = {m.key: [x for x in (_mean(_values(groups[v], m.key)) for v in order)
                                if math.isfinite(x)] for m in FLOOR_ROWS}
        rows = []
        for m in FLOOR_ROWS:
            f = floors.get(FLOOR_OF[m.key])
            raw = floors.get(RAW_KNN) if m.key == "knn_acc" else None
            if f is None and raw is None:
                continue
            rng = ranked_means[m.key]
            rows.append([m.header, fmt(f["mean"], m.fmt, m.scale) if f else NOT_RECORDED,
                         fmt(raw["mean"], m.fmt, m.scale) if raw else "–",
                         f"{fmt(min(rng), m.fmt, m.scale)} – {fmt(max(rng), m.fmt, m.scale)}"
                         if rng else "–"])
        seeds = sorted({s for f in floors.values() for s in f["seeds"]})
        tables.append(Table(
            "floors", "Floors: the untrained encoder on the same split and seeds",
            ["figure", "untrained encoder (floor)", "raw inputs", "ranked strategies (lowest – "
             "highest mean)"], rows,
            note=f"mean over the section's {_plural(len(seeds), 'seed', 'seeds')} "
                 f"({', '.join(map(str, seeds))}) of the untrained encoder, evaluated exactly "
                 "as the trained ones; raw inputs: kNN on the unencoded inputs (image suites). "
                 "A run that does not beat its floor learned nothing, whatever its rank.",
            align=["l", "r", "r", "r"]))
        spread = {k: f["spread_within_seed"] for k, f in floors.items()
                  if f["spread_within_seed"] > 1e-9}
        if spread:
            notes.append("Floors differ between runs of the same seed ("
                         + ", ".join(f"{k} by up to {v:.4g}" for k, v in spread.items())
                         + "): the untrained encoder should not depend on the strategy.")
    else:
        facts.append("Floors: not recorded by these runs (older runs): whether a run beat the "
                     "untrained encoder cannot be told.")

    # comparisons with in-batch, Holm-adjusted over the section
    ref = groups.get(REFERENCE) if REFERENCE in order else None
    comps: dict[str, dict[str, Comparison]] = {}
    if ref is None:
        why = (f"{REFERENCE} did not train" if REFERENCE in did_not_train else
               f"no default {REFERENCE} run in this section")
        notes.append(f"{why[0].upper()}{why[1:]}: no comparison against it.")
    else:
        for v in order:
            if v != REFERENCE:
                comps[v] = {m.key: compare(v, groups[v], ref, m.key) for m in ACCURACY}
        for m in ACCURACY:
            fam = [comps[v][m.key] for v in comps]
            for c, adj in zip(fam, stats.holm([c.p for c in fam]), strict=True):
                c.p_holm = adj
    family = [comps[v]["knn_acc"] for v in comps]
    tested = [c for c in family if c.tested]
    ses = [c.se for c in tested if math.isfinite(c.se) and c.se > 0]
    se = statistics.median(ses) if ses else math.nan
    if not ses and ref is not None and n_items and by_items:
        se = stats.pooled_se(n_items[0], intervals[REFERENCE]["knn_acc"].mean, len(ref))
    winners = sorted((c for c in family if c.beyond_noise and c.diff > 0),
                     key=lambda c: (-c.diff, c.variant))
    losers = sorted((c for c in family if c.beyond_noise and c.diff < 0),
                    key=lambda c: (c.diff, c.variant))
    verdict = {
        "reference": REFERENCE if ref is not None else None, "metric": "knn_acc",
        "basis": "items" if any(c.items for c in tested) else "seeds",
        "comparisons": len(tested), "alpha": ALPHA, "power": POWER, "se": se,
        "detectable": stats.detectable(se, len(tested), stats.LEVEL, POWER)
        if tested else math.nan,
        "winner": winners[0].variant if winners else None,
        "above": [c.variant for c in winners], "below": [c.variant for c in losers]}
    data["verdict"] = verdict
    data["comparisons"] = {m.key: [comps[v][m.key].as_dict() for v in comps] for m in ACCURACY}
    for v in comps:
        data["strategies"][v]["comparison"] = {k: c.as_dict() for k, c in comps[v].items()}

    if ref is not None and comps and by_items:
        headers = ["strategy", "seeds", "test"]
        for m in ACCURACY:
            short = m.header.split(" (")[0]
            headers += [f"Δ {short} (points)", "95% interval of Δ", "p", "Holm p"]
        headers.append("verdict (kNN)")
        rows = []
        for v in comps:
            k, lin = comps[v]["knn_acc"], comps[v]["linear_acc"]
            test = k.describe() if k.test == lin.test else \
                f"kNN: {k.describe()}; linear: {lin.describe()}"
            row = [v, str(k.seeds), test]
            for c in (k, lin):
                row += [_points(c.diff) if c.seeds else "–", _ci_points(c),
                        fmt_p(c.p) if c.tested else (c.reason or "no test"), fmt_p(c.p_holm)]
            row.append(("above " if k.diff > 0 else "below ") + f"{REFERENCE} beyond noise"
                       if k.beyond_noise else "within noise" if k.tested else "not tested")
            rows.append(row)
        m_k = sum(1 for c in family if c.tested)
        tables.append(Table(
            "comparisons", f"Against {REFERENCE}: paired on the same test items, "
                           "Holm-adjusted", headers, rows,
            note=f"Δ = strategy − {REFERENCE} in percentage points, on the seeds both have and "
                 "the same test items. Test: with one seed the exact McNemar test (on the items "
                 "exactly one of the two got right); with several a paired bootstrap over "
                 "seeds, then items; where a run lacks per-item results, the paired t-test "
                 "over seeds. Holm p: adjusted by Holm's procedure over the section's "
                 f"{_plural(m_k, 'comparison', 'comparisons')} of ranked strategies with "
                 f"{REFERENCE} (each accuracy its own family); a difference counts when its "
                 f"Holm p < {ALPHA:.2f}.",
            align=["l", "r", "l", *(["r"] * 8), "l"]))
    elif ref is not None and comps:  # older runs without per-item results: over seeds
        headers = ["strategy", "pairs"]
        for m in ACCURACY:
            short = m.header.split(" (")[0]
            headers += [f"Δ {short} (points)", "95% CI of Δ", "p"]
        rows = []
        for v in comps:
            row = [v, str(comps[v]["knn_acc"].seeds)]
            for m in ACCURACY:
                c = comps[v][m.key]
                pcell = fmt_p(c.p) if c.tested else ("too few pairs" if c.seeds < 2
                                                     else "undefined")
                row += [_points(c.diff) if c.seeds else "–", _ci_points(c), pcell]
            rows.append(row)
            data["strategies"][v]["vs_reference"] = {
                m.key: comps[v][m.key].seed_test.as_dict() | {"p_holm": comps[v][m.key].p_holm}
                for m in ACCURACY if comps[v][m.key].seed_test is not None}
        holm_words = ", ".join(f"{c.variant} {fmt_p(c.p_holm)}" for c in family if c.tested)
        tables.append(Table(
            "paired", f"Against {REFERENCE}: {stats.PAIRED_TEST} matched by seed", headers,
            rows, note=f"Δ = strategy − {REFERENCE} in percentage points, averaged over the "
                       f"seeds both have (pairs); p: two-sided {stats.PAIRED_TEST} (H0: no "
                       "difference). With fewer than 2 pairs there is no test (too few "
                       "pairs); with equal differences on every pair the t statistic is "
                       "undefined. These runs recorded no per-item results, so only seeds "
                       "are compared"
                       + (f"; Holm-adjusted p of kNN accuracy over the {len(tested)} "
                          f"comparisons: {holm_words}." if holm_words else ".")))

    # oracle references: bounds, never ranked
    headroom: dict = {"metric": "knn_acc", "strategy": FN_FREE, "reference": REFERENCE}
    fn_free = [v for v in oracles if data["strategies"][v]["strategy"] == FN_FREE
               and not data["strategies"][v]["tuned"]]
    if fn_free and ref is not None:
        c = compare(fn_free[0], groups[fn_free[0]], ref, "knn_acc")
        headroom |= {"value": c.diff} | {k: x for k, x in c.as_dict().items()
                                          if k not in ("p_holm", "beyond_noise")}
        iv = "" if not math.isfinite(c.low) else f", 95% interval {_ci_points(c)}"
        ptxt = f"p {_p_words(c.p)}" if c.tested else (c.reason or "no test")
        facts.append(f"False-negative headroom ({FN_FREE} − {REFERENCE}, kNN accuracy): "
                     f"{_points(c.diff)} points{iv} ({c.describe()}; {ptxt}): the most that "
                     "handling false negatives could gain on this suite at this budget.")
    else:
        if fn_free:
            why = f"no {REFERENCE} run that trained"
        elif any(data["strategies"][v]["strategy"] == FN_FREE for v in did_not_train):
            why = f"{FN_FREE} did not train"
        else:
            why = f"no {FN_FREE} run"
        headroom |= {"value": None, "reason": why}
        facts.append(f"False-negative headroom ({FN_FREE} − {REFERENCE}): not measured ({why} "
                     "in this section).")
    data["headroom"] = headroom
    if oracles:
        rows = []
        for v in oracles:
            delta = compare(v, groups[v], ref, "knn_acc") if ref is not None else None
            rows.append([v, str(len(groups[v])), health_cell(health[v]),
                         *(acc_cell(v, m, True) for m in ACCURACY),
                         f"{_points(delta.diff)} {_ci_points(delta)}".strip()
                         if delta is not None and delta.seeds else "–"])
            if delta is not None:
                data["strategies"][v]["vs_reference_bound"] = delta.as_dict()
        tables.append(Table(
            "oracle", "Oracle references (bounds, not ranked)",
            ["oracle reference", "seeds", "health", *(m.header for m in ACCURACY),
             f"Δ kNN vs {REFERENCE} (points) [95% interval]"], rows,
            note="these strategies read the labels (fn-free removes same-class negatives, "
                 "supcon takes same-class items as positives): bounds on what a "
                 "self-supervised strategy could reach, never ranked nor named winners.",
            align=["l", "r", "l", "r", "r", "r"]))

    # did not train: any seed collapsed
    dnt_rows, dnt_data = [], []
    for v in did_not_train:
        g = groups[v]
        bad = g[g["seed"].astype(int).isin(collapsed[v])]
        diag = [HEALTH_METRICS["uniform"], HEALTH_METRICS["rankme"], HEALTH_METRICS["align"],
                Metric("hardness", "hardness (cos)", 1.0, "f3")]
        vals = {m.key: _mean(_values(bad, m.key)) for m in diag}
        knn = _mean(_values(bad, "knn_acc"))
        floor = _mean(_values(bad, FLOOR_OF["knn_acc"]))
        reasons = [f"seed {s}: {r or 'no reason recorded'}" for s, h, r in health[v]
                   if h == COLLAPSED]
        n_bad = len(collapsed[v])
        label = v + (" (oracle reference)" if is_oracle(g) else "")
        dnt_rows.append([label, f"{n_bad} of {len(g)} "
                         f"({'seed' if n_bad == 1 else 'seeds'} "
                         f"{', '.join(map(str, collapsed[v]))})",
                         *(fmt(vals[m.key], m.fmt) for m in diag),
                         fmt(knn, "f2", 100.0), fmt(floor, "f2", 100.0), "; ".join(reasons)])
        dnt_data.append({"strategy": v, "collapsed_seeds": collapsed[v],
                         "seeds": len(g), "oracle": is_oracle(g), **vals, "knn_acc": knn,
                         "floor_knn_acc": floor, "reasons": reasons})
    data["did_not_train"] = dnt_data
    if dnt_rows:
        tables.append(Table(
            "did_not_train", "Did not train (collapsed: not ranked)",
            ["strategy", "collapsed seeds", "uniformity", "RankMe", "alignment",
             "hardness (cos)", "kNN accuracy (%)", "kNN floor (%)", "reason"], dnt_rows,
            note="a strategy any of whose seeds collapsed (representation health) leaves the "
                 "ranking with all its seeds; figures: means over its collapsed runs. "
                 "Uniformity near 0 or RankMe near 1: the embeddings have lost their spread.",
            align=["l", "l", "r", "r", "r", "r", "r", "r", "l"]))

    # negatives and cost (+ the Pareto fronts of the ranked strategies)
    listed = [*order, *oracles, *did_not_train]
    label = {v: v for v in order} | {v: f"{v} (oracle reference)" for v in oracles} | \
        {v: f"{v} (did not train)" for v in did_not_train}
    cost_metrics = [m for m in COST if m.key in df.columns and df[m.key].notna().any()]
    means = {v: {m.key: _mean(_values(groups[v], m.key)) for m in cost_metrics} for v in listed}
    knn = [intervals[v]["knn_acc"].mean for v in order]
    fronts = {}
    for key, _ in PARETO_COSTS:
        if key in df.columns:
            on = stats.pareto_front([means[v].get(key, math.nan) for v in order], knn)
            fronts[key] = [v for v, o in zip(order, on, strict=True) if o]
    data["pareto"] = fronts
    headers = ["strategy", *(m.header for m in cost_metrics), "Pareto front"]
    rows = []
    for v in listed:
        on = [name for key, name in PARETO_COSTS if v in fronts.get(key, [])]
        rows.append([label[v], *(fmt(means[v][m.key], m.fmt, m.scale) for m in cost_metrics),
                     " & ".join(on) or "–"])
        data["strategies"][v]["means"] = means[v]
    tags = _tags(df)
    devices = sorted({str(t.get("device", NOT_RECORDED)) for t in tags})
    worlds = sorted({str(t.get("world_size", "1")) for t in tags})
    measured = (f"Cost measured on: {', '.join(devices)}"
                + (f" ({' or '.join(worlds)} processes per run)" if worlds != ["1"] else "")
                + ". ")
    tables.append(Table("cost", "Negatives and cost", headers, rows,
                        note=measured + "Means over seeds. FNR: share of selected negatives "
                             "with the anchor's class; hardness: mean cosine similarity of "
                             "anchor and negative; wall-clock: training only. Pareto front: "
                             "no other ranked strategy has higher kNN accuracy at no more "
                             "FLOPs (or wall-clock).",
                        align=["l"] + ["r"] * len(cost_metrics) + ["l"]))

    # tuned against default
    tuned_rows, tuned_data = [], []
    for v in order:
        g = groups[v]
        tag = str(g["tuned"].iloc[0])
        if not tag:
            continue
        base = str(g["strategy"].iloc[0])
        d = groups.get(base)
        m = ACCURACY[0]
        t_iv = intervals[v][m.key]
        if d is None:
            tuned_rows.append([base, "no default run", fmt_interval(t_iv, m), "–", "–", "–",
                               tag])
            tuned_data.append({"strategy": base, "variant": v, "export": tag})
            continue
        p = stats.paired_t(_by_seed(g, m.key), _by_seed(d, m.key))
        d_iv = intervals[base][m.key]
        pcell = fmt_p(p.p) if p.ok else ("too few pairs" if p.n < 2 else "undefined")
        tuned_rows.append([base, fmt_interval(d_iv, m), fmt_interval(t_iv, m),
                           fmt(p.mean_diff, "f2", m.scale, True) if p.n else "–", str(p.n),
                           pcell, tag])
        tuned_data.append({"strategy": base, "variant": v, "export": tag,
                           "default": d_iv.as_dict(), "tuned": t_iv.as_dict(),
                           "paired": p.as_dict()})
    if tuned_rows:
        tables.append(Table(
            "tuned", "Tuned against default", ["strategy", "default kNN accuracy (%)",
                                               "tuned kNN accuracy (%)", "Δ (points)", "pairs",
                                               "p", "tuning export"], tuned_rows,
            note=f"runs tagged negbench.tuned ran the configuration of that tuning export; "
                 f"the others ran the defaults. Δ = tuned − default over the seeds both have, "
                 f"{stats.PAIRED_TEST}.", align=["l", "r", "r", "r", "r", "r", "l"]))
    data["tuned"] = tuned_data

    # FNR by hardness decile
    dec_keys = [f"fnr_decile_{i}" for i in range(DECILES)]
    if any(k in df.columns for k in dec_keys):
        rows = []
        for v in listed:
            g = groups[v]
            fnr = [_mean(_values(g, k)) for k in dec_keys]
            edges = [_mean(_values(g, f"hardness_decile_edge_{i}")) for i in range(DECILES)]
            rows.append([label[v], *(fmt(x, "f2", 100.0) for x in fnr)])
            data["strategies"][v]["deciles"] = {"fnr": fnr, "edges": edges}
        tables.append(Table(
            "deciles", "FNR (%) by hardness decile", ["strategy", "D1 (easiest)",
                                                      *(f"D{i}" for i in range(2, DECILES)),
                                                      f"D{DECILES} (hardest)"], rows,
            note="the selected negatives of a run split into ten equal parts by their cosine "
                 "similarity to the anchor (D1: the least similar); the FNR within each, "
                 "averaged over seeds."))

    ctx = _Ctx(suite, budget, order, groups, intervals, item_iv, comps, verdict, means,
               did_not_train, n_items, ref is not None)
    headline = _headline(ctx) if by_items else _seed_headline(ctx)
    data["facts"] = facts
    return Section(suite, budget, slug(f"{suite}-{budget}"), title, df, order, headline, notes,
                   tables, data, facts=facts)


@dataclass
class _Ctx:
    suite: str
    budget: str
    order: list[str]
    groups: dict
    intervals: dict
    item_iv: dict
    comps: dict
    verdict: dict
    means: dict
    did_not_train: list[str]
    n_items: list[int]
    has_ref: bool


def _acc_words(ctx: _Ctx, v: str) -> str:
    iv = ctx.item_iv[v].get("knn_acc")
    if iv is not None:
        low, high = iv.exact if iv.exact else (iv.low, iv.high)
        how = ("exact binomial interval, 1 seed" if iv.exact else
               f"95% interval over {iv.seeds} seeds and {iv.items} test items")
        return f"{fmt(iv.mean, 'f2', 100)}% [{fmt(low, 'f2', 100)}, {fmt(high, 'f2', 100)}] " \
               f"({how})"
    si = ctx.intervals[v]["knn_acc"]
    n = len(ctx.groups[v])
    return (f"{fmt(si.mean, 'f2', 100)}% ± {fmt(si.half, 'f2', 100)} (95% CI, {n} seeds)"
            if si.half is not None else
            f"{fmt(si.mean, 'f2', 100)}% (one seed: no interval can be given)")


def _cost_words(ctx: _Ctx, best: str) -> list[str]:
    mb = ctx.means.get(best, {})
    ref = ctx.means.get(REFERENCE, {})
    parts, cost = [], []
    if math.isfinite(mb.get("wall_seconds", math.nan)):
        c = f"{fmt(mb['wall_seconds'], 'f2')} s of training"
        if best != REFERENCE and ref.get("wall_seconds", 0) > 0:
            c += f" ({mb['wall_seconds'] / ref['wall_seconds']:.2f}× {REFERENCE}'s)"
        cost.append(c)
    if math.isfinite(mb.get("flops", math.nan)):
        cost.append(f"{fmt(mb['flops'], 'g3')} FLOPs")
    if cost:
        parts.append("It costs " + " and ".join(cost) + ".")
    if math.isfinite(mb.get("fnr", math.nan)):
        s = f"Its false-negative rate is {fmt(mb['fnr'], 'f2', 100)}%"
        if best != REFERENCE and math.isfinite(ref.get("fnr", math.nan)):
            s += f" ({REFERENCE}: {fmt(ref['fnr'], 'f2', 100)}%)"
        parts.append(s + ".")
    return parts


def _dnt_words(ctx: _Ctx) -> list[str]:
    k = len(ctx.did_not_train)
    if not k:
        return []
    return [f"{_plural(k, 'strategy', 'strategies')} did not train (collapsed) and "
            f"{'is' if k == 1 else 'are'} not ranked: see “Did not train”."]


def _detect_words(ctx: _Ctx, what: str) -> str:
    v = ctx.verdict
    if not math.isfinite(v["detectable"]):
        return ""
    return (f" The smallest difference {what} could have detected is about "
            f"{fmt(v['detectable'], 'f2', 100)} points of kNN accuracy ({POWER:.0%} power, "
            f"Holm over {_plural(v['comparisons'], 'comparison', 'comparisons')}).")


def _headline(ctx: _Ctx) -> str:
    """The verdict of a section with per-item results: a winner only when its lead over
    in-batch is positive and survives Holm; otherwise that nothing differs beyond noise."""
    where = f"{ctx.suite} ({ctx.budget})"
    v = ctx.verdict
    if not ctx.order:
        return " ".join([f"No strategy of {where} has a ranked result."] + _dnt_words(ctx))
    accs = [ctx.intervals[x]["knn_acc"].mean for x in ctx.order]
    accs = [a for a in accs if math.isfinite(a)]
    if not accs:
        return f"No run of {where} recorded a kNN accuracy."
    spread = (f"the {_plural(len(ctx.order), 'ranked strategy', 'ranked strategies')} "
              f"{'lies' if len(ctx.order) == 1 else 'lie'} within "
              f"{fmt(min(accs), 'f2', 100)}–{fmt(max(accs), 'f2', 100)}% kNN accuracy")
    if ctx.n_items:
        n = ctx.n_items[0]
        spread += f" on {n} test items (one item = {100 / n:.2f} points)"
    if not ctx.has_ref:
        why = (f"{REFERENCE} did not train" if REFERENCE in ctx.did_not_train
               else f"there is no {REFERENCE} run")
        return " ".join([f"On {where} no strategy can be named better: {why}, so no lead "
                         f"could be tested; {spread}."] + _dnt_words(ctx))
    if not ctx.comps:
        return " ".join([f"On {where} {REFERENCE} is the only ranked strategy: "
                         f"{_acc_words(ctx, REFERENCE)}."] + _dnt_words(ctx))
    fam = [ctx.comps[x]["knn_acc"] for x in ctx.comps]
    below = [ctx.comps[x]["knn_acc"] for x in v["below"]]
    below_words = ""
    if below:
        below_words = (" " + ", ".join(f"{c.variant} ({_points(c.diff)} points, Holm p "
                                       f"{_p_words(c.p_holm)})" for c in below)
                       + f" {'falls' if len(below) == 1 else 'fall'} below {REFERENCE} "
                       "beyond noise.")
    if v["winner"] is not None:
        w = ctx.comps[v["winner"]]["knn_acc"]
        parts = [f"**{w.variant}** leads {REFERENCE} on {where} by {_points(w.diff)} points "
                 f"of kNN accuracy (95% interval {_ci_points(w)}; {w.describe()}: p "
                 f"{_p_words(w.p)}, Holm-adjusted p {_p_words(w.p_holm)} over "
                 f"{_plural(v['comparisons'], 'comparison', 'comparisons')} with {REFERENCE}). "
                 f"Its kNN accuracy: {_acc_words(ctx, w.variant)}."]
        more = [ctx.comps[x]["knn_acc"] for x in v["above"][1:]]
        if more:
            parts.append("Also above " + REFERENCE + " beyond noise: " + ", ".join(
                f"{c.variant} ({_points(c.diff)} points)" for c in more) + ".")
        parts += _cost_words(ctx, w.variant)
        if below_words:
            parts.append(below_words.strip())
        return " ".join(parts + _dnt_words(ctx))
    untested = sum(1 for c in fam if not c.tested)
    lead = max((c.diff for c in fam if math.isfinite(c.diff)), default=math.nan)
    head = ("no strategy differs from" if not below else "no strategy leads")
    parts = [f"On {where}, {head} {REFERENCE} beyond noise at this budget: {spread}, and no "
             f"lead over {REFERENCE} (the largest: {_points(lead)} points) survives Holm's "
             f"correction over {_plural(v['comparisons'], 'comparison', 'comparisons')}."
             + below_words + _detect_words(ctx, "these runs")]
    if untested:
        parts.append(f"{_plural(untested, 'comparison', 'comparisons')} could not be tested.")
    return " ".join(parts + _dnt_words(ctx))


def _seed_headline(ctx: _Ctx) -> str:
    """The headline of a section whose runs recorded no per-item results (older runs): the
    ranking in words as before, then the verdict over seeds, Holm-adjusted."""
    m = ACCURACY[0]
    where = f"{ctx.suite} ({ctx.budget})"
    if not ctx.order:
        return " ".join([f"No strategy of {where} has a ranked result."] + _dnt_words(ctx))
    best = ctx.order[0]
    iv = ctx.intervals[best][m.key]
    if not math.isfinite(iv.mean):
        return f"No run of {ctx.suite} ({ctx.budget}) recorded a kNN accuracy."
    parts = [f"**{best}** ranks first on {where} by kNN accuracy: {_acc_words(ctx, best)}."]
    if len(ctx.order) == 1:
        parts.append("It is the only strategy with finished runs.")
        return " ".join(parts + _dnt_words(ctx))

    def lead(a: str, b: str) -> str:
        p = stats.paired_t(_by_seed(ctx.groups[a], m.key), _by_seed(ctx.groups[b], m.key))
        d = ctx.intervals[a][m.key].mean - ctx.intervals[b][m.key].mean
        return f"{fmt(d, 'f2', 100)} points ({significance(p)})"

    runner = ctx.order[1]
    parts.append(f"It leads the runner-up, {runner}, by {lead(best, runner)}.")
    if best != REFERENCE and ctx.has_ref and runner != REFERENCE:
        parts.append(f"Against {REFERENCE} the lead is {lead(best, REFERENCE)}.")
    parts += _cost_words(ctx, best)
    v = ctx.verdict
    if ctx.comps:
        if not v["comparisons"]:
            parts.append(f"No comparison with {REFERENCE} could be tested (these runs recorded "
                         "no per-item results, and the seeds give no test).")
        elif v["winner"] is not None:
            c = ctx.comps[v["winner"]]["knn_acc"]
            parts.append(f"After Holm's correction over the {v['comparisons']} comparisons "
                         f"with {REFERENCE} ({stats.PAIRED_TEST} over seeds), {c.variant}'s "
                         f"lead of {_points(c.diff)} points survives (adjusted p "
                         f"{_p_words(c.p_holm)}).")
        else:
            parts.append(f"After Holm's correction over "
                         f"{_plural(v['comparisons'], 'comparison', 'comparisons')} with "
                         f"{REFERENCE} ({stats.PAIRED_TEST} over seeds; these runs recorded no "
                         "per-item results), no lead over "
                         f"{REFERENCE} is beyond noise." + _detect_words(ctx, "these seeds"))
    return " ".join(parts + _dnt_words(ctx))


# --------------------------------------------------------------------------- the whole report
def _verdict(kind: str, spent: float, total: float) -> tuple[str, bool]:
    if not (math.isfinite(spent) and math.isfinite(total)):
        return "not recorded", False
    if spent == total:
        return "exact", True
    if spent > total and kind in ("flops", "seconds"):
        return f"over by {100 * (spent - total) / total:.2f}% (its last step)", True
    word = "over" if spent > total else "short"
    return f"{word} by {fmt(abs(spent - total), 'g3')}", False


def audit_table(finished: pd.DataFrame) -> tuple[Table, list[dict], list[str]]:
    rows, data, problems = [], [], []
    f = finished.sort_values(["suite", "budget", "variant", "seed", "start_time"], kind="stable")
    for r in f.itertuples(index=False):
        spent = float(getattr(r, "budget_spent", math.nan))
        total = float(getattr(r, "budget_total", math.nan))
        kind = str(r.budget).split("=")[0]
        verdict, ok = _verdict(kind, spent, total)
        rows.append([r.suite, r.variant, str(r.seed), r.budget, fmt(spent, "int"),
                     fmt(total, "int"), verdict])
        data.append({"run_id": r.run_id, "suite": r.suite, "strategy": r.variant,
                     "seed": int(r.seed), "budget": r.budget, "spent": spent, "total": total,
                     "verdict": verdict, "ok": ok})
        if not ok:
            problems.append(f"{r.suite}/{r.variant}/seed {r.seed}: {verdict}")
    for suite, g in f.groupby("suite"):
        budgets = sorted(set(g["budget"]))
        if len(budgets) > 1:
            problems.append(f"{suite}: runs under different budgets ({', '.join(budgets)}); "
                            "each budget has its own section")
    t = Table("audit", "Budget audit", ["suite", "strategy", "seed", "budget", "spent",
                                        "total", "verdict"], rows,
              note="every finished run's spent budget against its total, in the budget's own "
                   "unit (samples, steps, FLOPs or seconds).",
              align=["l", "l", "r", "l", "r", "r", "l"])
    return t, data, problems


def failed_table(frame: pd.DataFrame) -> tuple[Table | None, list[dict]]:
    bad = frame[frame["status"].isin(["FAILED", "KILLED"])].sort_values(
        ["suite", "variant", "seed", "start_time"], kind="stable")
    if bad.empty:
        return None, []
    rows, data = [], []
    for r in bad.itertuples(index=False):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start_time / 1000))
        rows.append([r.suite, r.variant, str(r.seed), r.budget, r.status, when,
                     r.failure or "no failure tag"])
        data.append({"run_id": r.run_id, "suite": r.suite, "strategy": r.variant,
                     "seed": int(r.seed), "budget": r.budget, "status": r.status,
                     "failure": r.failure})
    return Table("failed", "Failed runs", ["suite", "strategy", "seed", "budget", "status",
                                           "started", "failure"], rows,
                 note="not counted in any table above; `negbench ablate` tries a failed cell "
                      "again when the spec runs again.", align=["l"] * 7), data


def provenance_table(finished: pd.DataFrame) -> tuple[Table, dict]:
    n = len(finished)
    tags = list(finished["tags"])
    items = [("git commit", "git_commit"), ("command", COMMAND_TAG), ("device", "device"),
             ("host", "host"), ("python", "python")]
    versions = sorted({k for t in tags for k in t if k.startswith("version.")})
    items += [(f"{k[len('version.'):]} version", k) for k in versions]
    rows, data = [], {}
    for label, key in items:
        counts: dict[str, int] = {}
        for t in tags:
            v = t.get(key, "")
            counts[v] = counts.get(v, 0) + 1
        shown = []
        for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            name = v if v else "not recorded"
            shown.append(name if len(counts) == 1 else f"{name} ({c} runs)")
        rows.append([label, "; ".join(shown)])
        data[key] = {(v or "not recorded"): c for v, c in counts.items()}
    return Table("provenance", "Provenance", ["what", f"value (over the {n} finished runs)"],
                 rows, note="from the tags every run records; a value that differs between "
                            "runs is listed with its count of runs.",
                 align=["l", "l"]), data


def _budget_order(suite: str, budget: str) -> tuple:
    """Sections by suite, then budget kind, then amount as a number (20000 before 100000)."""
    kind, _, amount = budget.partition("=")
    try:
        return (suite, kind, float(amount), budget)
    except ValueError:
        return (suite, kind, math.inf, budget)


def build(runs: Runs) -> Report:
    frame = runs.frame
    finished_all = runs.finished
    finished, dupes = latest_per_seed(finished_all)
    notes = []
    for why, c in runs.ignored.items():
        notes.append(f"{c} run(s) {why} left out.")
    if dupes:
        notes.append(f"{dupes} older finished run(s) of a strategy and seed that ran again left "
                     "out: each table keeps the most recent run per seed.")
    other = frame[~frame["status"].isin(["FINISHED", "FAILED", "KILLED"])]
    if len(other):
        notes.append(f"{len(other)} run(s) not finished yet "
                     f"({', '.join(sorted(set(other['status'])))}) left out.")
    sections = [build_section(s, b, g) for (s, b), g in sorted(
        finished.groupby(["suite", "budget"], sort=False), key=lambda kv: _budget_order(*kv[0]))]
    audit, audit_data, problems = audit_table(finished_all)
    failed, failed_data = failed_table(frame)
    prov, prov_data = provenance_table(finished_all)
    tables = [audit] + ([failed] if failed else []) + [prov]
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    counts = frame["status"].value_counts().to_dict()
    data = {
        "experiment": runs.experiment, "tracking_uri": runs.uri, "generated": generated,
        "runs": {str(k): int(v) for k, v in counts.items()},
        "sections": [s.data | {"headline": s.headline, "notes": s.notes} for s in sections],
        "audit": {"runs": audit_data, "problems": problems},
        "failed": failed_data, "provenance": prov_data, "notes": notes,
        "level": stats.LEVEL, "test": stats.PAIRED_TEST, "reference": REFERENCE,
    }
    return Report(runs.experiment, runs.uri, generated, sections, tables, notes, data)
