"""A section's tables beside its verdict: the ranking, the floors, the strategies that did not
train, negatives and cost (with the Pareto fronts), tuned against default, and FNR by hardness
decile. Each function returns its Table (None when the section has nothing to show) and the
plain data the section's ``report.json`` keeps of it.
"""

from __future__ import annotations

import math

from negbench.harness.tags import TUNED_SAME_TAG
from negbench.reports import stats
from negbench.reports.contract import (
    COLLAPSED,
    FLOOR_OF,
    FLOOR_ROWS,
    HEALTH_METRICS,
    NOT_RECORDED,
    RAW_KNN,
    SectionRuns,
    floor_cell,
    health_cell,
    is_oracle,
    run_tags,
)
from negbench.reports.data import plain_label_of
from negbench.reports.format import (
    ACCURACY,
    COST,
    DECILES,
    NO_LABELS,
    PARETO_COSTS,
    Metric,
    Table,
    finite_values,
    fmt,
    fmt_interval,
    fmt_p,
    mean,
    per_seed,
    plural,
)


# --------------------------------------------------------------------------- ranking
def ranking_table(sr: SectionRuns) -> Table | None:
    """The trained, non-oracle strategies by mean kNN accuracy; None when there is none."""
    order, groups = sr.order, sr.groups
    if not order:
        return None
    headers = ["rank", "strategy", "seeds", *(["health"] if sr.health_recorded else []),
               *(m.header for m in sr.ranked_metrics),
               *(["kNN − floor (points)"] if sr.floors_recorded else [])]
    rows = []
    all_single = all(len(groups[v]) == 1 for v in order)
    for i, v in enumerate(order, 1):
        rows.append([str(i), v, str(len(groups[v])),
                     *([health_cell(sr.health[v])] if sr.health_recorded else []),
                     *(sr.acc_cell(v, m, not all_single) for m in sr.ranked_metrics),
                     *([floor_cell(sr.margins[v])] if sr.floors_recorded else [])])
    if sr.by_items:
        per = " and ".join(str(n) for n in sr.n_items)
        note = (f"accuracy: mean [95% interval] over seeds and the {per} test items (one item "
                f"= {', '.join(f'{100 / n:.2f}' for n in sr.n_items)} points): with one seed "
                "the exact binomial (Clopper-Pearson) interval, with several a hierarchical "
                "bootstrap over seeds, then items, that holds both sources of variance. A "
                "figure without per-item results: mean ± half-width of its Student-t interval "
                "over seeds.")
    elif all_single:
        note = "one seed per strategy: the values of single runs; no interval can be given."
    else:
        note = ("mean over seeds ± half-width of its 95% Student-t confidence interval (t with "
                "n − 1 degrees of freedom); with one seed no interval can be given.")
    if sr.health_recorded:
        note += (" health: the run's representation verdict (ok, or degraded with its "
                 "reason); collapsed runs are not ranked.")
    if sr.floors_recorded:
        note += (" kNN − floor: kNN accuracy minus the untrained encoder's on the same split "
                 "and seed; a run not above it learned nothing, whatever its rank.")
    title = "Ranking by kNN accuracy"
    if not sr.labelled:
        title = "Ranking by retrieval MRR (no labels)"
        note += (f" kNN and linear accuracy: {NO_LABELS} (the suite's data has none); "
                 "strategies are ranked by retrieval MRR.")
    return Table("ranking", title, headers, rows, note=note,
                 align=["r", "l", "r", *(["l"] if sr.health_recorded else []),
                        *(["r"] * len(sr.ranked_metrics)),
                        *(["l"] if sr.floors_recorded else [])])


def ranking_notes(sr: SectionRuns) -> list[str]:
    """Ranked strategies with one seed only (without per-item results), and those not above
    the untrained encoder on every seed."""
    notes = []
    order = sr.order
    one_seed = [v for v in order if len(sr.groups[v]) == 1]
    if one_seed and not sr.by_items:
        notes.append(("Every strategy has" if len(one_seed) == len(order) else
                      f"{', '.join(one_seed)} {'has' if len(one_seed) == 1 else 'have'}")
                     + " one seed only: no interval can be given, and no test of a difference.")
    not_above = [v for v in order if sr.margins[v] and sr.margins[v]["not_above"]]
    if not_above:
        notes.append(f"{', '.join(not_above)} {'does' if len(not_above) == 1 else 'do'} not "
                     "beat the untrained encoder's kNN accuracy on every seed: ranked, but "
                     "learned nothing there.")
    return notes


# --------------------------------------------------------------------------- floors
def floors_table(sr: SectionRuns, floors: dict) -> Table:
    """The section's floors (contract.section_floors, not empty) beside the ranked range."""
    ranked_means = {m.key: [x for x in (mean(finite_values(sr.groups[v], m.key))
                                        for v in sr.order)
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
    return Table(
        "floors", "Floors: the untrained encoder on the same split and seeds",
        ["figure", "untrained encoder (floor)", "raw inputs", "ranked strategies (lowest – "
         "highest mean)"], rows,
        note=f"mean over the section's {plural(len(seeds), 'seed', 'seeds')} "
             f"({', '.join(map(str, seeds))}) of the untrained encoder, evaluated exactly "
             "as the trained ones; raw inputs: kNN on the unencoded inputs (image suites). "
             "A run that does not beat its floor learned nothing, whatever its rank.",
        align=["l", "r", "r", "r"])


def floor_spread_note(floors: dict) -> str | None:
    spread = {k: f["spread_within_seed"] for k, f in floors.items()
              if f["spread_within_seed"] > 1e-9}
    if not spread:
        return None
    return ("Floors differ between runs of the same seed ("
            + ", ".join(f"{k} by up to {v:.4g}" for k, v in spread.items())
            + "): the untrained encoder should not depend on the strategy.")


# --------------------------------------------------------------------------- did not train
def did_not_train_table(sr: SectionRuns) -> tuple[Table | None, list[dict]]:
    """The strategies any of whose seeds collapsed, with the diagnostics of those runs."""
    dnt_rows, dnt_data = [], []
    for v in sr.did_not_train:
        g = sr.groups[v]
        collapsed = sr.collapsed[v]
        bad = g[g["seed"].astype(int).isin(collapsed)]
        diag = [HEALTH_METRICS["uniform"], HEALTH_METRICS["rankme"], HEALTH_METRICS["align"],
                Metric("hardness", "hardness (cos)", 1.0, "f3")]
        vals = {m.key: mean(finite_values(bad, m.key)) for m in diag}
        knn = mean(finite_values(bad, "knn_acc"))
        floor = mean(finite_values(bad, FLOOR_OF["knn_acc"]))
        reasons = [f"seed {s}: {r or 'no reason recorded'}" for s, h, r in sr.health[v]
                   if h == COLLAPSED]
        n_bad = len(collapsed)
        label = v + (" (oracle reference)" if is_oracle(g) else "")
        dnt_rows.append([label, f"{n_bad} of {len(g)} "
                         f"({'seed' if n_bad == 1 else 'seeds'} "
                         f"{', '.join(map(str, collapsed))})",
                         *(fmt(vals[m.key], m.fmt) for m in diag),
                         fmt(knn, "f2", 100.0), fmt(floor, "f2", 100.0), "; ".join(reasons)])
        dnt_data.append({"strategy": v, "collapsed_seeds": collapsed,
                         "seeds": len(g), "oracle": is_oracle(g), **vals, "knn_acc": knn,
                         "floor_knn_acc": floor, "reasons": reasons})
    if not dnt_rows:
        return None, dnt_data
    return Table(
        "did_not_train", "Did not train (collapsed: not ranked)",
        ["strategy", "collapsed seeds", "uniformity", "RankMe", "alignment",
         "hardness (cos)", "kNN accuracy (%)", "kNN floor (%)", "reason"], dnt_rows,
        note="a strategy any of whose seeds collapsed (representation health) leaves the "
             "ranking with all its seeds; figures: means over its collapsed runs. "
             "Uniformity near 0 or RankMe near 1: the embeddings have lost their spread.",
        align=["l", "l", "r", "r", "r", "r", "r", "r", "l"]), dnt_data


# --------------------------------------------------------------------------- cost
def cost_table(sr: SectionRuns, strategies: dict) -> tuple[Table, dict, dict]:
    """Negatives and cost of every listed strategy, with the Pareto fronts of the ranked ones:
    (the table, each strategy's means, the fronts). Each strategy's means also go to its
    ``strategies[v]["means"]``."""
    df, order = sr.df, sr.order
    cost_metrics = [m for m in COST if m.key in df.columns and df[m.key].notna().any()]
    means = {v: {m.key: mean(finite_values(sr.groups[v], m.key)) for m in cost_metrics}
             for v in sr.listed}
    knn = [sr.intervals[v]["knn_acc"].mean for v in order]
    fronts = {}
    for key, _ in PARETO_COSTS:
        if key in df.columns and sr.labelled:  # fronts in kNN accuracy
            on = stats.pareto_front([means[v].get(key, math.nan) for v in order], knn)
            fronts[key] = [v for v, o in zip(order, on, strict=True) if o]
    headers = ["strategy", *(m.header for m in cost_metrics), "Pareto front"]
    rows = []
    for v in sr.listed:
        on = [name for key, name in PARETO_COSTS if v in fronts.get(key, [])]
        rows.append([sr.label(v), *(fmt(means[v][m.key], m.fmt, m.scale) for m in cost_metrics),
                     " & ".join(on) or "–"])
        strategies[v]["means"] = means[v]
    tags = run_tags(df)
    devices = sorted({str(t.get("device", NOT_RECORDED)) for t in tags})
    worlds = sorted({str(t.get("world_size", "1")) for t in tags})
    measured = (f"Cost measured on: {', '.join(devices)}"
                + (f" ({' or '.join(worlds)} processes per run)" if worlds != ["1"] else "")
                + ". ")
    fnr = ("FNR: share of selected negatives with the anchor's class" if sr.labelled else
           f"FNR: {NO_LABELS}")
    return Table("cost", "Negatives and cost", headers, rows,
                 note=measured + f"Means over seeds. {fnr}; hardness: mean cosine similarity of "
                      "anchor and negative; "
                      + ("filter: the false-negative filter's removed candidates per anchor, "
                         "the share of them that were same-class (precision) and the share of "
                         "the selection's same-class candidates it removed (recall), '–' for "
                         "rows without a filter; "
                         if any(m.key == "filter_removed" for m in cost_metrics) else "")
                      + "wall-clock: training only. Pareto front: "
                      "no other ranked strategy has higher kNN accuracy at no more "
                      "FLOPs (or wall-clock).",
                 align=["l"] + ["r"] * len(cost_metrics) + ["l"]), means, fronts


# --------------------------------------------------------------------------- tuned, deciles
def tuned_table(sr: SectionRuns) -> tuple[Table | None, list[dict]]:
    """Each ranked tuned variant against its strategy's default runs, over seeds."""
    tuned_rows, tuned_data = [], []
    for v in sr.order:
        g = sr.groups[v]
        tag = str(g["tuned"].iloc[0])
        if not tag:
            continue
        base = plain_label_of(g)  # its default runs: same strategy, same filter
        d = sr.groups.get(base) if v != base else None  # every run of `base` tuned: none
        m = ACCURACY[0]
        t_iv = sr.intervals[v][m.key]
        val, val_cell = _tuning_val(g)
        if d is None:
            # one run is both where the tuning kept the defaults (spec: tuned_same)
            same = all(t.get(TUNED_SAME_TAG) == "1" for t in g["tags"])
            tuned_rows.append([base, "the same runs (tuning kept the defaults)" if same
                               else "no default run", fmt_interval(t_iv, m),
                               fmt(0.0, "f2", m.scale, True) if same else "–",
                               str(len(g)) if same else "–", "–", val_cell, tag])
            tuned_data.append({"strategy": base, "variant": v, "export": tag, "validation": val,
                               "same_as_default": same})
            continue
        p = stats.paired_t(per_seed(g, m.key), per_seed(d, m.key))
        d_iv = sr.intervals[base][m.key]
        pcell = fmt_p(p.p) if p.ok else ("too few pairs" if p.n < 2 else "undefined")
        tuned_rows.append([base, fmt_interval(d_iv, m), fmt_interval(t_iv, m),
                           fmt(p.mean_diff, "f2", m.scale, True) if p.n else "–", str(p.n),
                           pcell, val_cell, tag])
        tuned_data.append({"strategy": base, "variant": v, "export": tag,
                           "default": d_iv.as_dict(), "tuned": t_iv.as_dict(),
                           "paired": p.as_dict(), "validation": val})
    if not tuned_rows:
        return None, tuned_data
    return Table(
        "tuned", "Tuned against default", ["strategy", "default kNN accuracy (%)",
                                           "tuned kNN accuracy (%)", "Δ (points)", "pairs",
                                           "p", "tuning: validation kNN (%)", "tuning export"],
        tuned_rows,
        note=f"runs tagged negbench.tuned ran the configuration of that tuning export; "
             f"the others ran the defaults. Δ = tuned − default on the test split over the "
             f"seeds both have, {stats.PAIRED_TEST}. The tuning column is the study's own "
             f"figure on the validation split, default → best of its trials (one seed; the "
             f"best of many trials is biased upwards), as the export's comments give it.",
        align=["l", "r", "r", "r", "r", "r", "r", "l"]), tuned_data


def _tuning_val(g) -> tuple[dict | None, str]:
    """The tuning's validation kNN (default, best, trials) that a tuned run's tag carries."""
    text = str(g["tuned_val"].iloc[0]) if "tuned_val" in g else ""
    try:
        default, best, trials = text.split()
        val = {"default": float(default), "best": float(best), "trials": int(trials)}
    except ValueError:
        return None, "–"
    return val, (f"{100 * val['default']:.2f} → {100 * val['best']:.2f} "
                 f"({val['trials']} trials)")


def deciles_table(sr: SectionRuns, strategies: dict) -> Table | None:
    """FNR by hardness decile of every listed strategy (each one's FNR and decile edges also
    go to its ``strategies[v]["deciles"]``); None when no run recorded them."""
    dec_keys = [f"fnr_decile_{i}" for i in range(DECILES)]
    if not any(k in sr.df.columns for k in dec_keys):
        return None
    rows = []
    for v in sr.listed:
        g = sr.groups[v]
        fnr = [mean(finite_values(g, k)) for k in dec_keys]
        edges = [mean(finite_values(g, f"hardness_decile_edge_{i}")) for i in range(DECILES)]
        rows.append([sr.label(v), *(fmt(x, "f2", 100.0) for x in fnr)])
        strategies[v]["deciles"] = {"fnr": fnr, "edges": edges}
    return Table(
        "deciles", "FNR (%) by hardness decile", ["strategy", "D1 (easiest)",
                                                  *(f"D{i}" for i in range(2, DECILES)),
                                                  f"D{DECILES} (hardest)"], rows,
        note="the selected negatives of a run split into ten equal parts by their cosine "
             "similarity to the anchor (D1: the least similar); the FNR within each, "
             "averaged over seeds.")
