"""From an experiment's runs to a report: sections (one per suite and budget), their tables as
formatted text, their numbers as plain data (``report.json``), and headlines in words.

Every number a table prints is computed here, once, from the runs frame (final metrics as
mlflow returns them); the renderers only lay the tables out.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from negbench.reports import stats
from negbench.reports.data import COMMAND_TAG, Runs, latest_per_seed

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


# --------------------------------------------------------------------------- one section
def build_section(suite: str, budget: str, df: pd.DataFrame) -> Section:
    groups = {v: g.sort_values("seed") for v, g in df.groupby("variant", sort=False)}
    ranked_metrics = [*ACCURACY, *suite_metrics(df)]
    intervals = {v: {m.key: stats.mean_ci(_values(g, m.key)) for m in ranked_metrics}
                 for v, g in groups.items()}

    def knn_key(v: str) -> tuple:
        m = intervals[v]["knn_acc"].mean
        return (0, -m, v) if math.isfinite(m) else (1, 0.0, v)

    order = sorted(groups, key=knn_key)
    title = f"{suite} · {budget}"
    notes: list[str] = []
    tables: list[Table] = []
    data: dict = {"suite": suite, "budget": budget, "order": order, "strategies": {}}

    # ranking
    headers = ["rank", "strategy", "seeds", *(m.header for m in ranked_metrics)]
    rows = []
    all_single = all(len(g) == 1 for g in groups.values())
    for i, v in enumerate(order, 1):
        g = groups[v]
        seeds = sorted(int(s) for s in g["seed"])
        rows.append([str(i), v, str(len(seeds)),
                     *(fmt_interval(intervals[v][m.key], m, not all_single)
                       for m in ranked_metrics)])
        data["strategies"][v] = {
            "strategy": str(g["strategy"].iloc[0]), "tuned": str(g["tuned"].iloc[0]),
            "seeds": seeds, "run_ids": list(g["run_id"]),
            **{m.key: intervals[v][m.key].as_dict() for m in ranked_metrics}}
    tables.append(Table("ranking", "Ranking by kNN accuracy", headers, rows,
                        note=("one seed per strategy: the values of single runs; no interval "
                              "can be given." if all_single else
                              "mean over seeds ± half-width of its 95% Student-t confidence "
                              "interval (t with n − 1 degrees of freedom); with one seed no "
                              "interval can be given."),
                        align=["r", "l", "r"] + ["r"] * len(ranked_metrics)))
    one_seed = [v for v in order if len(groups[v]) == 1]
    if one_seed:
        notes.append(("Every strategy has" if len(one_seed) == len(order) else
                      f"{', '.join(one_seed)} {'has' if len(one_seed) == 1 else 'have'}")
                     + " one seed only: no interval can be given, and no test of a difference.")

    # paired tests against in-batch
    ref = groups.get(REFERENCE)
    paired: dict[str, dict[str, stats.Paired]] = {}
    if ref is None:
        notes.append(f"No default {REFERENCE} run in this section: no paired test against it.")
    else:
        headers = ["strategy", "pairs"]
        for m in ACCURACY:
            short = m.header.split(" (")[0]
            headers += [f"Δ {short} (points)", "95% CI of Δ", "p"]
        rows = []
        for v in order:
            if v == REFERENCE:
                continue
            g = groups[v]
            paired[v] = {m.key: stats.paired_t(_by_seed(g, m.key), _by_seed(ref, m.key))
                         for m in ACCURACY}
            first = paired[v][ACCURACY[0].key]
            row = [v, str(first.n)]
            for m in ACCURACY:
                p = paired[v][m.key]
                ci = ("–" if p.half is None else
                      f"[{fmt(p.low, 'f2', m.scale, True)}, {fmt(p.high, 'f2', m.scale, True)}]")
                pcell = fmt_p(p.p) if p.ok else ("too few pairs" if p.n < 2 else "undefined")
                row += [fmt(p.mean_diff, "f2", m.scale, sign=True) if p.n else "–", ci, pcell]
            rows.append(row)
            data["strategies"][v]["vs_reference"] = {m.key: paired[v][m.key].as_dict()
                                                     for m in ACCURACY}
        if rows:
            tables.append(Table(
                "paired", f"Against {REFERENCE}: {stats.PAIRED_TEST} matched by seed", headers,
                rows, note=f"Δ = strategy − {REFERENCE} in percentage points, averaged over the "
                           f"seeds both have (pairs); p: two-sided {stats.PAIRED_TEST} (H0: no "
                           "difference). With fewer than 2 pairs there is no test (too few "
                           "pairs); with equal differences on every pair the t statistic is "
                           "undefined."))

    # negatives and cost (+ the Pareto fronts)
    cost_metrics = [m for m in COST if m.key in df.columns and df[m.key].notna().any()]
    means = {v: {m.key: _mean(_values(groups[v], m.key)) for m in cost_metrics} for v in order}
    knn = [intervals[v]["knn_acc"].mean for v in order]
    fronts = {}
    for key, _ in PARETO_COSTS:
        if key in df.columns:
            on = stats.pareto_front([means[v].get(key, math.nan) for v in order], knn)
            fronts[key] = [v for v, o in zip(order, on, strict=True) if o]
    data["pareto"] = fronts
    headers = ["strategy", *(m.header for m in cost_metrics), "Pareto front"]
    rows = []
    for v in order:
        on = [name for key, name in PARETO_COSTS if v in fronts.get(key, [])]
        rows.append([v, *(fmt(means[v][m.key], m.fmt, m.scale) for m in cost_metrics),
                     " & ".join(on) or "–"])
        data["strategies"][v]["means"] = means[v]
    devices = sorted({str(t.get("device", "not recorded")) for t in df["tags"]})
    worlds = sorted({str(t.get("world_size", "1")) for t in df["tags"]})
    measured = (f"Cost measured on: {', '.join(devices)}"
                + (f" ({' or '.join(worlds)} processes per run)" if worlds != ["1"] else "")
                + ". ")
    tables.append(Table("cost", "Negatives and cost", headers, rows,
                        note=measured + "Means over seeds. FNR: share of selected negatives "
                             "with the anchor's class; hardness: mean cosine similarity of "
                             "anchor and negative; wall-clock: training only. Pareto front: "
                             "no other strategy has higher kNN accuracy at no more FLOPs (or "
                             "wall-clock).",
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
        for v in order:
            g = groups[v]
            fnr = [_mean(_values(g, k)) for k in dec_keys]
            edges = [_mean(_values(g, f"hardness_decile_edge_{i}")) for i in range(DECILES)]
            rows.append([v, *(fmt(x, "f2", 100.0) for x in fnr)])
            data["strategies"][v]["deciles"] = {"fnr": fnr, "edges": edges}
        tables.append(Table(
            "deciles", "FNR (%) by hardness decile", ["strategy", "D1 (easiest)",
                                                      *(f"D{i}" for i in range(2, DECILES)),
                                                      f"D{DECILES} (hardest)"], rows,
            note="the selected negatives of a run split into ten equal parts by their cosine "
                 "similarity to the anchor (D1: the least similar); the FNR within each, "
                 "averaged over seeds."))

    headline = _headline(suite, budget, order, groups, intervals, paired, means)
    return Section(suite, budget, slug(f"{suite}-{budget}"), title, df, order, headline, notes,
                   tables, data)


def _headline(suite, budget, order, groups, intervals, paired, means) -> str:
    m = ACCURACY[0]
    best = order[0]
    iv = intervals[best][m.key]
    if not math.isfinite(iv.mean):
        return f"No run of {suite} ({budget}) recorded a kNN accuracy."
    n_seeds = len(groups[best])
    acc = (f"{fmt(iv.mean, 'f2', 100)}% ± {fmt(iv.half, 'f2', 100)} (95% CI, {n_seeds} seeds)"
           if iv.half is not None else
           f"{fmt(iv.mean, 'f2', 100)}% (one seed: no interval can be given)")
    parts = [f"**{best}** ranks first on {suite} ({budget}) by kNN accuracy: {acc}."]
    if len(order) == 1:
        parts.append("It is the only strategy with finished runs.")
        return " ".join(parts)

    def lead(a: str, b: str) -> str:
        p = stats.paired_t(_by_seed(groups[a], m.key), _by_seed(groups[b], m.key))
        d = intervals[a][m.key].mean - intervals[b][m.key].mean
        return f"{fmt(d, 'f2', 100)} points ({significance(p)})"

    runner = order[1]
    parts.append(f"It leads the runner-up, {runner}, by {lead(best, runner)}.")
    if best != REFERENCE and REFERENCE in groups and runner != REFERENCE:
        parts.append(f"Against {REFERENCE} the lead is {lead(best, REFERENCE)}.")
    mb = means.get(best, {})
    ref = means.get(REFERENCE, {})
    cost = []
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
    return " ".join(parts)


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
