"""A section's verdict (issue 16): each ranked strategy against in-batch, paired on the same
test items where the runs have per-item results (else over seeds), Holm-adjusted over the
section; the smallest difference the section could have detected; the false-negative headroom
(fn-free − in-batch) and the oracle references, bounds that are never ranked.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from negbench.reports import stats
from negbench.reports.contract import FN_FREE, SectionRuns, health_cell, item_vectors
from negbench.reports.format import (
    ACCURACY,
    REFERENCE,
    Table,
    fmt_p,
    p_words,
    per_seed,
    plural,
    points,
)

ALPHA = round(1 - stats.LEVEL, 12)  # the family-wise level of a section's comparisons
POWER = 0.8  # of the smallest detectable difference


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
    p = stats.paired_t(per_seed(a, metric), per_seed(b, metric))
    se = p.sd / math.sqrt(p.n) if p.sd and p.n >= 2 else math.nan
    nan = math.nan
    return Comparison(variant, metric, p.n, None, p.mean_diff, nan if p.low is None else p.low,
                      nan if p.high is None else p.high, se, p.p if p.ok else nan,
                      stats.PAIRED_TEST, p.reason, seed_test=p)


def ci_points(c: Comparison) -> str:
    if not (math.isfinite(c.low) and math.isfinite(c.high)):
        return "–"
    return f"[{points(c.low)}, {points(c.high)}]"


# --------------------------------------------------------------------------- against in-batch
def reference_runs(sr: SectionRuns) -> pd.DataFrame | None:
    """In-batch's runs when it is ranked (it trained), else None."""
    return sr.groups.get(REFERENCE) if REFERENCE in sr.order else None


def no_reference_note(sr: SectionRuns) -> str:
    why = (f"{REFERENCE} did not train" if REFERENCE in sr.did_not_train else
           f"no default {REFERENCE} run in this section")
    return f"{why[0].upper()}{why[1:]}: no comparison against it."


def compare_with_reference(sr: SectionRuns, ref: pd.DataFrame | None
                           ) -> dict[str, dict[str, Comparison]]:
    """Every other ranked strategy − in-batch in each accuracy, Holm-adjusted over the section
    (each accuracy its own family); empty without a reference."""
    comps: dict[str, dict[str, Comparison]] = {}
    if ref is None:
        return comps
    for v in sr.order:
        if v != REFERENCE:
            comps[v] = {m.key: compare(v, sr.groups[v], ref, m.key) for m in ACCURACY}
    for m in ACCURACY:
        fam = [comps[v][m.key] for v in comps]
        for c, adj in zip(fam, stats.holm([c.p for c in fam]), strict=True):
            c.p_holm = adj
    return comps


def section_verdict(sr: SectionRuns, ref: pd.DataFrame | None,
            comps: dict[str, dict[str, Comparison]]) -> dict:
    """The section's verdict in kNN accuracy: the strategies above and below in-batch beyond
    noise (the winner: the largest lead above), and the smallest detectable difference."""
    family = [comps[v]["knn_acc"] for v in comps]
    tested = [c for c in family if c.tested]
    ses = [c.se for c in tested if math.isfinite(c.se) and c.se > 0]
    se = statistics.median(ses) if ses else math.nan
    if not ses and ref is not None and sr.n_items and sr.by_items:
        se = stats.pooled_se(sr.n_items[0], sr.intervals[REFERENCE]["knn_acc"].mean, len(ref))
    winners = sorted((c for c in family if c.beyond_noise and c.diff > 0),
                     key=lambda c: (-c.diff, c.variant))
    losers = sorted((c for c in family if c.beyond_noise and c.diff < 0),
                    key=lambda c: (c.diff, c.variant))
    return {
        "reference": REFERENCE if ref is not None else None, "metric": "knn_acc",
        "basis": "items" if any(c.items for c in tested) else "seeds",
        "comparisons": len(tested), "alpha": ALPHA, "power": POWER, "se": se,
        "detectable": stats.detectable(se, len(tested), stats.LEVEL, POWER)
        if tested else math.nan,
        "winner": winners[0].variant if winners else None,
        "above": [c.variant for c in winners], "below": [c.variant for c in losers]}


def comparisons_table(comps: dict[str, dict[str, Comparison]]) -> Table:
    """The comparisons of a section with per-item results, Holm-adjusted."""
    family = [comps[v]["knn_acc"] for v in comps]
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
            row += [points(c.diff) if c.seeds else "–", ci_points(c),
                    fmt_p(c.p) if c.tested else (c.reason or "no test"), fmt_p(c.p_holm)]
        row.append(("above " if k.diff > 0 else "below ") + f"{REFERENCE} beyond noise"
                   if k.beyond_noise else "within noise" if k.tested else "not tested")
        rows.append(row)
    m_k = sum(1 for c in family if c.tested)
    return Table(
        "comparisons", f"Against {REFERENCE}: paired on the same test items, "
                       "Holm-adjusted", headers, rows,
        note=f"Δ = strategy − {REFERENCE} in percentage points, on the seeds both have and "
             "the same test items. Test: with one seed the exact McNemar test (on the items "
             "exactly one of the two got right); with several a paired bootstrap over "
             "seeds, then items; where a run lacks per-item results, the paired t-test "
             "over seeds. Holm p: adjusted by Holm's procedure over the section's "
             f"{plural(m_k, 'comparison', 'comparisons')} of ranked strategies with "
             f"{REFERENCE} (each accuracy its own family); a difference counts when its "
             f"Holm p < {ALPHA:.2f}.",
        align=["l", "r", "l", *(["r"] * 8), "l"])


def paired_table(comps: dict[str, dict[str, Comparison]], strategies: dict) -> Table:
    """The comparisons of a section of older runs without per-item results: over seeds. Each
    strategy's seed tests go to its ``strategies[v]["vs_reference"]``."""
    family = [comps[v]["knn_acc"] for v in comps]
    tested = [c for c in family if c.tested]
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
            row += [points(c.diff) if c.seeds else "–", ci_points(c), pcell]
        rows.append(row)
        strategies[v]["vs_reference"] = {
            m.key: comps[v][m.key].seed_test.as_dict() | {"p_holm": comps[v][m.key].p_holm}
            for m in ACCURACY if comps[v][m.key].seed_test is not None}
    holm_words = ", ".join(f"{c.variant} {fmt_p(c.p_holm)}" for c in family if c.tested)
    return Table(
        "paired", f"Against {REFERENCE}: {stats.PAIRED_TEST} matched by seed", headers,
        rows, note=f"Δ = strategy − {REFERENCE} in percentage points, averaged over the "
                   f"seeds both have (pairs); p: two-sided {stats.PAIRED_TEST} (H0: no "
                   "difference). With fewer than 2 pairs there is no test (too few "
                   "pairs); with equal differences on every pair the t statistic is "
                   "undefined. These runs recorded no per-item results, so only seeds "
                   "are compared"
                   + (f"; Holm-adjusted p of kNN accuracy over the {len(tested)} "
                      f"comparisons: {holm_words}." if holm_words else "."))


# --------------------------------------------------------------------------- oracle references
def headroom(sr: SectionRuns, ref: pd.DataFrame | None, strategies: dict) -> tuple[dict, str]:
    """The false-negative headroom, fn-free − in-batch in kNN accuracy, and its fact in words
    (or why it was not measured). fn-free is the row that bears its plain name, like the
    reference: its default runs, or its tuned ones where the section ran it tuned only (the main
    job); "fn-free (tuned)" beside default runs, and filtered rows, are not the headroom."""
    out: dict = {"metric": "knn_acc", "strategy": FN_FREE, "reference": REFERENCE}
    fn_free = FN_FREE in sr.oracles
    if fn_free and ref is not None:
        c = compare(FN_FREE, sr.groups[FN_FREE], ref, "knn_acc")
        out |= {"value": c.diff} | {k: x for k, x in c.as_dict().items()
                                     if k not in ("p_holm", "beyond_noise")}
        iv = "" if not math.isfinite(c.low) else f", 95% interval {ci_points(c)}"
        ptxt = f"p {p_words(c.p)}" if c.tested else (c.reason or "no test")
        return out, (f"False-negative headroom ({FN_FREE} − {REFERENCE}, kNN accuracy): "
                     f"{points(c.diff)} points{iv} ({c.describe()}; {ptxt}): the most that "
                     "handling false negatives could gain on this suite at this budget.")
    if fn_free:
        why = f"no {REFERENCE} run that trained"
    elif any(strategies[v]["strategy"] == FN_FREE for v in sr.did_not_train):
        why = f"{FN_FREE} did not train"
    else:
        why = f"no {FN_FREE} run"
    out |= {"value": None, "reason": why}
    return out, (f"False-negative headroom ({FN_FREE} − {REFERENCE}): not measured ({why} "
                 "in this section).")


def oracle_table(sr: SectionRuns, ref: pd.DataFrame | None, strategies: dict) -> Table | None:
    """The oracle references that trained, with their kNN lead over in-batch (each one's
    comparison goes to its ``strategies[v]["vs_reference_bound"]``); None without any."""
    if not sr.oracles:
        return None
    rows = []
    for v in sr.oracles:
        delta = compare(v, sr.groups[v], ref, "knn_acc") if ref is not None else None
        rows.append([v, str(len(sr.groups[v])), health_cell(sr.health[v]),
                     *(sr.acc_cell(v, m, True) for m in ACCURACY),
                     f"{points(delta.diff)} {ci_points(delta)}".strip()
                     if delta is not None and delta.seeds else "–"])
        if delta is not None:
            strategies[v]["vs_reference_bound"] = delta.as_dict()
    return Table(
        "oracle", "Oracle references (bounds, not ranked)",
        ["oracle reference", "seeds", "health", *(m.header for m in ACCURACY),
         f"Δ kNN vs {REFERENCE} (points) [95% interval]"], rows,
        note="these strategies read the labels (fn-free removes same-class negatives, "
             "supcon takes same-class items as positives): bounds on what a "
             "self-supervised strategy could reach, never ranked nor named winners.",
        align=["l", "r", "l", "r", "r", "r"])
