"""A section's headline in words: with per-item results, a winner only when its lead over
in-batch is positive and survives Holm's correction, otherwise that nothing differs beyond
noise and what could have been detected; without them (older runs), the ranking in words and
then the verdict over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from negbench.reports import stats
from negbench.reports.format import (
    ACCURACY,
    REFERENCE,
    fmt,
    p_words,
    per_seed,
    plural,
    points,
    significance,
)
from negbench.reports.verdicts import POWER, ci_points


@dataclass
class HeadlineContext:
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


def _acc_words(ctx: HeadlineContext, v: str) -> str:
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


def _cost_words(ctx: HeadlineContext, best: str) -> list[str]:
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


def _dnt_words(ctx: HeadlineContext) -> list[str]:
    k = len(ctx.did_not_train)
    if not k:
        return []
    return [f"{plural(k, 'strategy', 'strategies')} did not train (collapsed) and "
            f"{'is' if k == 1 else 'are'} not ranked: see “Did not train”."]


def _detect_words(ctx: HeadlineContext, what: str) -> str:
    v = ctx.verdict
    if not math.isfinite(v["detectable"]):
        return ""
    return (f" The smallest difference {what} could have detected is about "
            f"{fmt(v['detectable'], 'f2', 100)} points of kNN accuracy ({POWER:.0%} power, "
            f"Holm over {plural(v['comparisons'], 'comparison', 'comparisons')}).")


def _one_seed_words(fam: list) -> list[str]:
    """With one training seed a paired test on the test items says nothing of how far another
    training run of the same strategy would land: said where a verdict was reached."""
    tested = [c for c in fam if c.tested]
    if not tested or any(c.seeds != 1 for c in tested):
        return []
    return ["With one training seed these tests cover the sampling of the test items, not "
            "the variation between training runs (seeds, threads, machines); run more seeds "
            "(`seeds = 3` in the spec) before choosing on this difference."]


def headline(ctx: HeadlineContext) -> str:
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
    spread = (f"the {plural(len(ctx.order), 'ranked strategy', 'ranked strategies')} "
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
        below_words = (" " + ", ".join(f"{c.variant} ({points(c.diff)} points, Holm p "
                                       f"{p_words(c.p_holm)})" for c in below)
                       + f" {'falls' if len(below) == 1 else 'fall'} below {REFERENCE} "
                       "beyond noise.")
    if v["winner"] is not None:
        w = ctx.comps[v["winner"]]["knn_acc"]
        parts = [f"**{w.variant}** leads {REFERENCE} on {where} by {points(w.diff)} points "
                 f"of kNN accuracy (95% interval {ci_points(w)}; {w.describe()}: p "
                 f"{p_words(w.p)}, Holm-adjusted p {p_words(w.p_holm)} over "
                 f"{plural(v['comparisons'], 'comparison', 'comparisons')} with {REFERENCE}). "
                 f"Its kNN accuracy: {_acc_words(ctx, w.variant)}."]
        more = [ctx.comps[x]["knn_acc"] for x in v["above"][1:]]
        if more:
            parts.append("Also above " + REFERENCE + " beyond noise: " + ", ".join(
                f"{c.variant} ({points(c.diff)} points)" for c in more) + ".")
        parts += _cost_words(ctx, w.variant)
        if below_words:
            parts.append(below_words.strip())
        return " ".join(parts + _one_seed_words(fam) + _dnt_words(ctx))
    untested = sum(1 for c in fam if not c.tested)
    lead = max((c.diff for c in fam if math.isfinite(c.diff)), default=math.nan)
    head = ("no strategy differs from" if not below else "no strategy leads")
    # When every strategy is below the reference, the "largest lead" is a deficit: call it the
    # closest, so a negative figure is never read as a lead.
    nearest = "none is ahead; the closest" if lead <= 0 else "the largest"
    parts = [f"On {where}, {head} {REFERENCE} beyond noise at this budget: {spread}, and no "
             f"lead over {REFERENCE} ({nearest}: {points(lead)} points) survives Holm's "
             f"correction over {plural(v['comparisons'], 'comparison', 'comparisons')}."
             + below_words + _detect_words(ctx, "these runs")]
    if untested:
        parts.append(f"{plural(untested, 'comparison', 'comparisons')} could not be tested.")
    if below:
        parts += _one_seed_words(fam)
    return " ".join(parts + _dnt_words(ctx))


def seed_headline(ctx: HeadlineContext) -> str:
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
        p = stats.paired_t(per_seed(ctx.groups[a], m.key), per_seed(ctx.groups[b], m.key))
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
                         f"lead of {points(c.diff)} points survives (adjusted p "
                         f"{p_words(c.p_holm)}).")
        else:
            parts.append(f"After Holm's correction over "
                         f"{plural(v['comparisons'], 'comparison', 'comparisons')} with "
                         f"{REFERENCE} ({stats.PAIRED_TEST} over seeds; these runs recorded no "
                         "per-item results), no lead over "
                         f"{REFERENCE} is beyond noise." + _detect_words(ctx, "these seeds"))
    return " ".join(parts + _dnt_words(ctx))
