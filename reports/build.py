"""From an experiment's runs to a report: sections (one per suite and budget), their tables as
formatted text, their numbers as plain data (``report.json``), and headlines in words.

Every number a table prints is computed here, once, from the runs frame (final metrics as
mlflow returns them); the renderers only lay the tables out. This module puts a section
together from its parts: the run contract (contract.py), the verdict against in-batch
(verdicts.py), the headline (headline.py), the other tables (tables.py), the tables across the
experiment (audit.py), and how each number prints (format.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd

from negbench.reports import stats
from negbench.reports.audit import audit_table, failed_table, provenance_table
from negbench.reports.contract import SectionRuns, section_floors, section_runs
from negbench.reports.data import Runs, latest_per_seed, plain_label_of
from negbench.reports.format import (
    ACCURACY,
    DECILES,
    NO_LABELS,
    PARETO_COSTS,
    REFERENCE,
    SUITE_OWN,
    Figure,
    Table,
    fmt_interval,
    items_dict,
    slug,
)
from negbench.reports.headline import HeadlineContext, headline, seed_headline
from negbench.reports.tables import (
    cost_table,
    deciles_table,
    did_not_train_table,
    floor_spread_note,
    floors_table,
    ranking_notes,
    ranking_table,
    tuned_table,
)
from negbench.reports.verdicts import (
    compare_with_reference,
    comparisons_table,
    headroom,
    no_reference_note,
    oracle_table,
    paired_table,
    reference_runs,
    section_verdict,
)

__all__ = ["ACCURACY", "DECILES", "PARETO_COSTS", "Figure", "Report", "Section", "Table",
           "build", "build_section", "slug"]


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


def _strategy_data(sr: SectionRuns, v: str) -> dict:
    """What ``report.json`` keeps of one variant before its comparisons and tables."""
    g = sr.groups[v]
    role = ("did_not_train" if v in sr.did_not_train else "oracle" if v in sr.oracles
            else "ranked")
    return {
        "strategy": str(g["strategy"].iloc[0]), "tuned": str(g["tuned"].iloc[0]),
        # the label sets these tuned runs apart from the strategy's default runs
        "tuned_apart": v != plain_label_of(g),
        "seeds": sorted(int(s) for s in g["seed"]), "run_ids": list(g["run_id"]),
        "role": role,
        "health": [{"seed": s, "verdict": h, "reason": r} for s, h, r in sr.health[v]],
        "floor_margin": sr.margins[v],
        **{m.key: sr.intervals[v][m.key].as_dict() for m in sr.ranked_metrics},
        **{f"{k}_items": items_dict(iv) for k, iv in sr.item_iv[v].items() if iv}}


# --------------------------------------------------------------------------- one section
def unlabelled_headline(sr, suite: str, budget: str) -> str:
    """The headline of a section whose suite has no labels: what is n/a, and the ranking by
    retrieval MRR in words, with no verdict (no test of a difference is made on it)."""
    where = f"{suite} ({budget})"
    head = (f"{where} has no labels: kNN and linear accuracy and the false-negative rate are "
            f"{NO_LABELS}.")
    if not sr.order:
        return f"{head} No strategy has a ranked result."
    m = SUITE_OWN["retrieval_mrr"]
    best = sr.order[0]
    return (f"{head} By retrieval MRR, {best} ranks first "
            f"({fmt_interval(sr.intervals[best][m.key], m)}); no difference between "
            "strategies is tested on it.")


def build_section(suite: str, budget: str, df: pd.DataFrame) -> Section:
    """One suite and budget: its finished runs (one per variant and seed) ranked, compared
    with in-batch, with floors, oracle references and runs that did not train apart."""
    sr = section_runs(df)
    order = sr.order
    notes: list[str] = []
    facts: list[str] = []
    tables: list[Table] = []
    data: dict = {"suite": suite, "budget": budget, "order": order, "oracle": sr.oracles,
                  "strategies": {v: _strategy_data(sr, v) for v in sr.everyone}}
    strategies = data["strategies"]

    # ranking: trained, non-oracle strategies only
    ranking = ranking_table(sr)
    if ranking is not None:
        tables.append(ranking)
    if not sr.health_recorded:
        facts.append("Representation health: not recorded by these runs (older runs), so a "
                     "collapsed run cannot be told apart from a weak one.")
    notes += ranking_notes(sr)

    # floors
    floors = section_floors(df)
    data["floors"] = floors
    if floors:
        tables.append(floors_table(sr, floors))
        spread = floor_spread_note(floors)
        if spread is not None:
            notes.append(spread)
    else:
        facts.append("Floors: not recorded by these runs (older runs): whether a run beat the "
                     "untrained encoder cannot be told.")

    # comparisons with in-batch, Holm-adjusted over the section (in kNN accuracy: none for a
    # suite without labels)
    ref = reference_runs(sr) if sr.labelled else None
    if not sr.labelled:
        notes.append(f"The comparisons with {REFERENCE}, their verdict and the false-negative "
                     f"headroom are in kNN accuracy: {NO_LABELS}.")
    elif ref is None:
        notes.append(no_reference_note(sr))
    comps = compare_with_reference(sr, ref)
    verdict = section_verdict(sr, ref, comps)
    data["verdict"] = verdict
    data["comparisons"] = {m.key: [comps[v][m.key].as_dict() for v in comps] for m in ACCURACY}
    for v in comps:
        strategies[v]["comparison"] = {k: c.as_dict() for k, c in comps[v].items()}
    if ref is not None and comps and sr.by_items:
        tables.append(comparisons_table(comps))
    elif ref is not None and comps:  # older runs without per-item results: over seeds
        tables.append(paired_table(comps, strategies))

    # oracle references: bounds, never ranked
    data["headroom"], fact = headroom(sr, ref, strategies)
    if sr.labelled:
        facts.append(fact)
    oracle = oracle_table(sr, ref, strategies)
    if oracle is not None:
        tables.append(oracle)

    # did not train: any seed collapsed
    dnt, data["did_not_train"] = did_not_train_table(sr)
    if dnt is not None:
        tables.append(dnt)

    # negatives and cost (+ the Pareto fronts of the ranked strategies), tuned, deciles
    cost, means, data["pareto"] = cost_table(sr, strategies)
    tables.append(cost)
    tuned, data["tuned"] = tuned_table(sr)
    if tuned is not None:
        tables.append(tuned)
    deciles = deciles_table(sr, strategies)
    if deciles is not None:
        tables.append(deciles)

    ctx = HeadlineContext(suite, budget, order, sr.groups, sr.intervals, sr.item_iv, comps,
                          verdict, means, sr.did_not_train, sr.n_items, ref is not None)
    if not sr.labelled:
        text = unlabelled_headline(sr, suite, budget)
    else:
        text = headline(ctx) if sr.by_items else seed_headline(ctx)
    data["labelled"] = sr.labelled
    data["facts"] = facts
    return Section(suite, budget, slug(f"{suite}-{budget}"), f"{suite} · {budget}", df, order,
                   text, notes, tables, data, facts=facts)


# --------------------------------------------------------------------------- the whole report
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
