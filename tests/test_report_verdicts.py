"""Verdicts a researcher can trust (issue 16), on hand-made runs: a section is built from a runs
frame shaped like ``reports.data``'s (per-item correctness as '0'/'1' strings, health and oracle
as tags, floors as metrics), with no training and, but for the last test, no mlflow.

What is checked: the headline names a winner only when its lead over in-batch survives Holm's
correction, and otherwise says that nothing differs beyond noise and what could have been
detected; collapsed runs and oracle references are never ranked nor named; floors and the
false-negative headroom are computed as defined; older runs without the new fields still
report, with the new parts "not recorded".
"""

from __future__ import annotations

import json
import math
import random
import statistics

import pandas as pd
import pytest

from negbench.reports import stats
from negbench.reports.build import Report, build, build_section
from negbench.reports.data import Runs
from negbench.reports.render import markdown, md_table

N = 360  # digits' test split: one item = 0.28 points
SUITE, BUDGET = "digits", "samples=1536"
OK = {"negbench.health": "ok"}


def bits(right: int, n: int = N, seed: int = 0) -> str:
    """A per-item correctness string with ``right`` ones at seeded random places."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    out = ["0"] * n
    for i in idx[:right]:
        out[i] = "1"
    return "".join(out)


def flip(b: str, to: str, k: int, skip: int = 0) -> str:
    """``b`` with the first ``k`` items that are not ``to`` (after ``skip`` of them) set to
    ``to``: k more right ('1') or wrong ('0') items, all discordant with ``b``."""
    out = list(b)
    where = [i for i, c in enumerate(out) if c != to][skip:skip + k]
    assert len(where) == k
    for i in where:
        out[i] = to
    return "".join(out)


def run(strategy: str, seed: int, knn: str | None, *, tags: dict | None = None,
        linear: str | None = None, **metrics) -> dict:
    """One finished run as the report's frame holds it."""
    row = {"run_id": f"{strategy}-{seed}", "run_name": "", "status": "FINISHED",
           "start_time": 1_000 + seed, "end_time": 2_000 + seed, "suite": SUITE,
           "strategy": strategy, "seed": seed, "budget": BUDGET, "tuned": "",
           "variant": strategy, "failure": "", "tags": dict(tags or {}),
           "knn_correct": knn, "linear_correct": linear or knn,
           "items_split": "test" if knn else None}
    if knn:
        row["knn_acc"] = knn.count("1") / len(knn)
        row["linear_acc"] = (linear or knn).count("1") / len(linear or knn)
    row.update(metrics)
    return row


def section(rows: list[dict]):
    return build_section(SUITE, BUDGET, pd.DataFrame(rows))


def table(sec, key: str):
    found = [t for t in sec.tables if t.key == key]
    return found[0] if found else None


def col(t, header: str) -> list[str]:
    j = t.headers.index(header)
    return [r[j] for r in t.rows]


def pts(x: float) -> str:
    return f"{100 * x:+.2f}"


# --------------------------------------------------------------------------- (a) the headline
def test_a_significant_lead_names_the_winner_its_margin_its_interval_and_the_test():
    ref = bits(300)
    rows = [run("in-batch", 0, ref, tags=OK), run("mixing", 0, flip(ref, "1", 40), tags=OK),
            run("hcl", 0, flip(ref, "0", 1), tags=OK)]
    sec = section(rows)
    v = sec.data["verdict"]
    assert v["winner"] == "mixing" and v["comparisons"] == 2 and v["basis"] == "items"
    c = next(c for c in sec.data["comparisons"]["knn_acc"] if c["variant"] == "mixing")
    assert c["diff"] == pytest.approx(40 / N)
    assert c["test"] == "exact McNemar"
    assert c["p"] == pytest.approx(2 / 2 ** 40)  # 40 discordant items, all mixing's
    assert c["p_holm"] == pytest.approx(min(1, 2 * c["p"]))
    h = sec.headline
    assert h.startswith(f"**mixing** leads in-batch on {SUITE} ({BUDGET}) by "
                        f"{pts(40 / N)} points of kNN accuracy")
    assert f"95% interval [{pts(c['low'])}, {pts(c['high'])}]" in h
    assert "exact McNemar on 360 test items, 1 seed" in h
    assert "Holm-adjusted p < 0.001 over 2 comparisons with in-batch" in h
    assert "hcl" not in h
    assert "With one training seed these tests cover the sampling of the test items" in h
    # the ranking marks the winner's row and says the comparison was beyond noise
    comp = table(sec, "comparisons")
    assert dict(zip(col(comp, "strategy"), col(comp, "verdict (kNN)"), strict=True)) == \
        {"mixing": "above in-batch beyond noise", "hcl": "within noise"}


@pytest.mark.parametrize("seeds", [1, 3])
def test_a_two_item_lead_is_no_winner_and_says_what_could_be_detected(seeds):
    """The issue's case: strategies within about one point on 360 items, the first two items
    ahead of in-batch."""
    rows = []
    for s in range(seeds):
        ref = bits(350, seed=s)
        rows += [run("in-batch", s, ref, tags=OK),
                 run("mixing", s, flip(ref, "1", 2), tags=OK),  # +2 items: +0.56 points
                 run("hcl", s, flip(flip(ref, "0", 2), "1", 1), tags=OK),  # -1 item
                 run("memory-bank", s, flip(flip(ref, "1", 3), "0", 2), tags=OK)]  # +1 item
    sec = section(rows)
    assert sec.order[0] == "mixing"  # it does rank first ...
    v = sec.data["verdict"]
    assert v["winner"] is None and v["above"] == [] and v["below"] == []  # ... but wins nothing
    h = sec.headline
    assert "**" not in h and not any(s in h for s in ("mixing", "hcl", "memory-bank"))
    assert h.startswith(f"On {SUITE} ({BUDGET}), no strategy differs from in-batch beyond "
                        "noise at this budget")
    assert "one item = 0.28 points" in h and "the largest: +0.56 points" in h
    # the smallest detectable difference: detectable(median se of the comparisons, 3)
    comps = sec.data["comparisons"]["knn_acc"]
    assert len(comps) == v["comparisons"] == 3
    se = statistics.median(c["se"] for c in comps)
    d = stats.detectable(se, 3)
    assert v["detectable"] == pytest.approx(d)
    assert d > 2 / N  # the two-item lead is below what these runs could resolve
    assert (f"The smallest difference these runs could have detected is about {100 * d:.2f} "
            "points of kNN accuracy (80% power, Holm over 3 comparisons)") in h
    test = "exact McNemar" if seeds == 1 else "paired bootstrap over seeds and items"
    assert {c["test"] for c in comps} == {test}
    assert table(sec, "paired") is None  # the seed-only table is for runs without items


# --------------------------------------------------------------------------- (b) collapse
def test_b_a_collapsed_strategy_is_not_ranked_not_named_and_listed_with_diagnostics():
    rows = []
    for s in (0, 1):
        ref = bits(300, seed=s)
        floor = {"floor_knn_acc": 0.5, "floor_uniform": -3.5, "floor_rankme": 30.0}
        rows += [run("in-batch", s, ref, tags=OK, uniform=-3.0, rankme=20.0, **floor),
                 run("hcl", s, flip(ref, "1", 1), tags=OK, uniform=-3.0, rankme=20.0,
                     **floor)]
    # random collapsed on seed 0 only, with the best accuracy of all: still out of the ranking
    rows += [run("random", 0, bits(N), uniform=-0.02, rankme=1.1, align=0.001, hardness=0.99,
                 tags={"negbench.health": "collapsed",
                       "negbench.health_reason": "uniformity -0.020 > -0.1"},
                 floor_knn_acc=0.5),
             run("random", 1, bits(359, seed=1), tags=OK, uniform=-2.0, rankme=9.0,
                 floor_knn_acc=0.5)]
    sec = section(rows)
    assert sec.order == ["hcl", "in-batch"]
    rank = table(sec, "ranking")
    assert "random" not in col(rank, "strategy")
    assert col(rank, "health") == ["ok", "ok"]
    assert "random" not in sec.headline and "collapsed" in sec.headline
    assert "1 strategy did not train" in sec.headline
    dnt = table(sec, "did_not_train")
    assert dnt.rows and col(dnt, "strategy") == ["random"]
    row = dict(zip(dnt.headers, dnt.rows[0], strict=True))
    assert row["collapsed seeds"] == "1 of 2 (seed 0)"
    assert (row["uniformity"], row["RankMe"], row["alignment"], row["hardness (cos)"]) == \
        ("-0.020", "1.10", "0.001", "0.990")  # the collapsed run's, not the healthy seed's
    assert (row["kNN accuracy (%)"], row["kNN floor (%)"]) == ("100.00", "50.00")
    assert "seed 0: uniformity -0.020 > -0.1" in row["reason"]
    d = sec.data["did_not_train"][0]
    assert d["collapsed_seeds"] == [0] and d["seeds"] == 2
    # nor is it in the comparisons, the Pareto front or the verdict
    assert [c["variant"] for c in sec.data["comparisons"]["knn_acc"]] == ["hcl"]
    assert all("random" not in f for f in sec.data["pareto"].values())
    assert sec.data["strategies"]["random"]["role"] == "did_not_train"
    assert "random (did not train)" in col(table(sec, "cost"), "strategy")


def test_b_a_degraded_run_stays_ranked_with_its_reason_and_the_floor_mark():
    rows = []
    for s in (0, 1):
        ref = bits(300, seed=s)
        rows += [run("in-batch", s, ref, tags=OK, floor_knn_acc=0.5),
                 run("semi-hard", s, bits(170 if s else 200, seed=9 + s), floor_knn_acc=0.5,
                     tags={"negbench.health": "degraded" if s else "ok",
                           "negbench.health_reason": "kNN accuracy 0.4722 is not above the "
                                                     "untrained encoder's 0.5000"})]
    sec = section(rows)
    rank = table(sec, "ranking")
    health = dict(zip(col(rank, "strategy"), col(rank, "health"), strict=True))
    assert health["in-batch"] == "ok"
    assert health["semi-hard"] == ("degraded (1 of 2 seeds): kNN accuracy 0.4722 is not above "
                                   "the untrained encoder's 0.5000")
    margin = dict(zip(col(rank, "strategy"), col(rank, "kNN − floor (points)"), strict=True))
    assert margin["in-batch"] == pts(_mean([300 / N - 0.5] * 2))
    assert margin["semi-hard"].startswith(pts(((200 + 170) / 2) / N - 0.5))
    assert "NOT above the floor (1 of 2 seeds)" in margin["semi-hard"]
    assert any("semi-hard does not beat the untrained encoder" in n for n in sec.notes)


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


# --------------------------------------------------------------------------- (c) oracles
def test_c_oracles_are_bounds_never_ranked_nor_winners_and_headroom_is_fn_free_minus_in_batch():
    ref = bits(300)
    rows = [run("in-batch", 0, ref, tags=OK),
            run("hcl", 0, flip(ref, "1", 1), tags=OK),
            # fn-free by its name (no oracle tag), supcon by its tag; both far above in-batch
            run("fn-free", 0, flip(ref, "1", 30), tags=OK),
            run("supcon", 0, flip(ref, "1", 50), tags={"negbench.oracle": "1", **OK}),
            # a strategy tagged as no oracle stays ranked
            run("glofnd", 0, flip(ref, "0", 1), tags={"negbench.oracle": "0", **OK})]
    sec = section(rows)
    assert sec.order == ["hcl", "in-batch", "glofnd"]
    assert sec.data["oracle"] == ["supcon", "fn-free"]
    assert not {"fn-free", "supcon"} & set(col(table(sec, "ranking"), "strategy"))
    assert sec.data["verdict"]["winner"] is None
    assert sec.data["verdict"]["comparisons"] == 2  # hcl and glofnd: oracles are not a family
    assert "fn-free" not in sec.headline and "supcon" not in sec.headline
    assert "**" not in sec.headline
    oracle = table(sec, "oracle")
    assert oracle.title == "Oracle references (bounds, not ranked)"
    assert col(oracle, "oracle reference") == ["supcon", "fn-free"]
    # the headroom: fn-free - in-batch in kNN accuracy, paired on the items
    hr = sec.data["headroom"]
    assert hr["value"] == pytest.approx(330 / N - 300 / N)
    assert hr["test"] == "exact McNemar" and hr["p"] == pytest.approx(2 / 2 ** 30)
    fact = next(f for f in sec.facts if f.startswith("False-negative headroom"))
    assert f"{pts(hr['value'])} points, 95% interval [{pts(hr['low'])}, {pts(hr['high'])}]" \
        in fact
    assert any(f"+{100 * 50 / N:.2f}" in c for c in col(oracle, oracle.headers[-1]))


def test_c_headroom_over_seeds_without_items_and_absent_without_fn_free():
    rows = []
    for s, (a, b) in enumerate([(0.90, 0.93), (0.91, 0.95), (0.89, 0.94)]):
        rows += [run("in-batch", s, None, knn_acc=a, linear_acc=a),
                 run("fn-free", s, None, knn_acc=b, linear_acc=b)]
    sec = section(rows)
    hr = sec.data["headroom"]
    p = stats.paired_t({0: 0.93, 1: 0.95, 2: 0.94}, {0: 0.90, 1: 0.91, 2: 0.89})
    assert hr["value"] == pytest.approx(p.mean_diff) and hr["p"] == pytest.approx(p.p)
    assert hr["test"] == "paired t-test"
    assert "paired t-test over 3 seeds" in next(f for f in sec.facts if "headroom" in f)
    assert sec.order == ["in-batch"] and "fn-free" not in sec.headline
    sec = section([r for r in rows if r["strategy"] == "in-batch"])
    assert sec.data["headroom"]["value"] is None
    # every run tuned (the main job): plain labels, so the tuned pair is the headroom
    tuned = [r | {"tuned": "digits.toml"} for r in rows]
    assert section(tuned).data["headroom"]["value"] == pytest.approx(p.mean_diff)
    # fn-free tuned beside its default runs: the default pair, not the tuned row
    extra = [r | {"tuned": "t.toml", "variant": "fn-free (tuned)", "run_id": f"t{i}",
                  "knn_acc": 0.99, "linear_acc": 0.99}
             for i, r in enumerate(rows) if r["strategy"] == "fn-free"]
    assert section(rows + extra).data["headroom"]["value"] == pytest.approx(p.mean_diff)
    assert "not measured (no fn-free run" in " ".join(sec.facts)


# --------------------------------------------------------------------------- (d) Holm
def _holm_rows(extra: int) -> list[dict]:
    ref = bits(300)
    # 9 items only a got right, 1 only in-batch: exact McNemar p = 2 (1 + 10) / 2^10 = 0.0215
    a = list(ref)
    for i in [i for i, x in enumerate(ref) if x == "0"][:9]:
        a[i] = "1"
    a[ref.index("1")] = "0"
    a = "".join(a)
    assert stats.mcnemar([x == "1" for x in a], [x == "1" for x in ref]).discordant == 10
    rows = [run("in-batch", 0, ref, tags=OK), run("debiased", 0, a, tags=OK)]
    rows += [run(f"other-{i}", 0, ref, tags=OK) for i in range(extra)]  # same as in-batch
    return rows


def test_d_holm_is_applied_a_raw_significant_lead_that_does_not_survive_is_no_winner():
    p_raw = 2 * (1 + 10) / 2 ** 10
    alone = section(_holm_rows(0))  # one comparison: Holm changes nothing, the lead counts
    c = alone.data["comparisons"]["knn_acc"][0]
    assert p_raw < 0.05 and c["p"] == pytest.approx(p_raw)
    assert c["p_holm"] == pytest.approx(p_raw)
    assert alone.data["verdict"]["winner"] == "debiased"
    assert alone.headline.startswith("**debiased** leads in-batch")
    three = section(_holm_rows(2))  # three comparisons: 3 x 0.0215 = 0.064 > 0.05
    c = next(c for c in three.data["comparisons"]["knn_acc"] if c["variant"] == "debiased")
    assert c["p"] == pytest.approx(p_raw) and c["p_holm"] == pytest.approx(3 * p_raw)
    assert three.data["verdict"]["winner"] is None and "debiased" not in three.headline
    assert "no strategy differs from in-batch beyond noise" in three.headline
    assert "survives Holm's correction over 3 comparisons" in three.headline
    comp = table(three, "comparisons")
    row = dict(zip(comp.headers, next(r for r in comp.rows if r[0] == "debiased"),
                   strict=False))
    assert (row["p"], row["Holm p"], row["verdict (kNN)"]) == ("0.021", "0.064",
                                                              "within noise")


def test_d_the_one_seed_caveat_comes_with_a_verdict_and_only_then():
    caveat = "With one training seed"
    three = []
    for s in range(3):
        ref = bits(300, seed=s)
        three += [run("in-batch", s, ref, tags=OK), run("mixing", s, flip(ref, "1", 40),
                                                        tags=OK)]
    sec = section(three)
    assert sec.data["verdict"]["winner"] == "mixing" and caveat not in sec.headline
    ref = bits(300)
    below = section([run("in-batch", 0, ref, tags=OK), run("hcl", 0, flip(ref, "0", 40),
                                                           tags=OK)])
    assert below.data["verdict"]["below"] == ["hcl"] and caveat in below.headline
    tie = section([run("in-batch", 0, ref, tags=OK), run("hcl", 0, flip(ref, "0", 1),
                                                         tags=OK)])
    assert tie.data["verdict"]["below"] == [] and caveat not in tie.headline


def test_d_when_every_strategy_is_below_in_batch_the_headline_calls_the_gap_the_closest():
    ref = bits(300)
    worse = list(ref)
    worse[ref.index("1")] = "0"  # one item fewer than in-batch: -1/N, far within noise
    rows = [run("in-batch", 0, ref, tags=OK), run("debiased", 0, "".join(worse), tags=OK)]
    h = section(rows).headline
    assert f"(none is ahead; the closest: {pts(-1 / len(ref))} points)" in h, h
    assert "the largest" not in h
    lead = section(_holm_rows(2)).headline  # debiased 8 items ahead, not beyond Holm
    assert "(the largest: +" in lead and "closest" not in lead, lead


# --------------------------------------------------------------------------- older runs
def test_runs_without_the_new_fields_report_as_before_with_not_recorded_parts():
    rows = []
    for s, (a, b) in enumerate([(0.90, 0.92), (0.91, 0.92)]):
        rows += [run("in-batch", s, None, knn_acc=a, linear_acc=a),
                 run("hcl", s, None, knn_acc=b, linear_acc=b)]
    sec = section(rows)
    rank = table(sec, "ranking")
    assert rank.headers == ["rank", "strategy", "seeds", "kNN accuracy (%)",
                            "linear accuracy (%)"]
    assert col(rank, "strategy") == ["hcl", "in-batch"]
    assert table(sec, "paired").title == "Against in-batch: paired t-test matched by seed"
    assert table(sec, "comparisons") is None and table(sec, "floors") is None
    facts = " ".join(sec.facts)
    assert "Floors: not recorded" in facts and "Representation health: not recorded" in facts
    assert "headroom (fn-free − in-batch): not measured" in facts
    h = sec.headline
    assert h.startswith(f"**hcl** ranks first on {SUITE} ({BUDGET}) by kNN accuracy")
    p = stats.paired_t({0: 0.92, 1: 0.92}, {0: 0.90, 1: 0.91})
    assert sec.data["strategies"]["hcl"]["vs_reference"]["knn_acc"]["p"] == pytest.approx(p.p)
    assert sec.data["verdict"]["basis"] == "seeds" and sec.data["verdict"]["winner"] is None
    assert "After Holm's correction over 1 comparison with in-batch (paired t-test over " \
           "seeds; these runs recorded no per-item results), no lead over in-batch is beyond " \
           "noise." in h


# --------------------------------------------------------------------------- floors
def test_floors_are_means_over_seeds_of_each_seed_with_raw_inputs():
    rows = []
    for s, fl in enumerate((0.40, 0.50)):
        ref = bits(300, seed=s)
        f = {"floor_knn_acc": fl, "floor_linear_acc": fl + 0.1, "raw_knn_acc": 0.97,
             "floor_uniform": -3.8, "floor_rankme": 40.0 + s}
        rows += [run("in-batch", s, ref, tags=OK, **f),
                 run("hcl", s, flip(ref, "1", 3), tags=OK, **f)]
    sec = section(rows)
    t = table(sec, "floors")
    got = {r[0]: r[1:] for r in t.rows}
    assert got["kNN accuracy (%)"][:2] == ["45.00", "97.00"]
    assert got["linear accuracy (%)"][:2] == ["55.00", "–"]
    assert got["uniformity"][0] == "-3.800" and got["RankMe"][0] == "40.50"
    assert got["kNN accuracy (%)"][2] == f"{100 * 300 / N:.2f} – {100 * 303 / N:.2f}"
    assert sec.data["floors"]["floor_knn_acc"]["mean"] == pytest.approx(0.45)
    assert sec.data["floors"]["floor_knn_acc"]["seeds"] == [0, 1]


def test_the_curves_figure_draws_a_panel_only_for_curves_some_run_recorded(tmp_path,
                                                                          monkeypatch):
    from matplotlib import pyplot as plt

    from negbench.reports import figures

    rows = [run("in-batch", 0, bits(300), tags=OK), run("hcl", 0, bits(290), tags=OK)]
    sec = section(rows)
    pal = figures.Palette(["in-batch", "hcl"])
    hist = pd.DataFrame([{"run_id": f"{v}-0", "step": st, "budget_fraction": st / 4,
                          "loss": 5.0 - st, "fnr": 0.1, "hardness": 0.2 * st, "lr": 1e-3}
                         for v in ("in-batch", "hcl") for st in range(1, 5)])
    panels = {}
    write_png = figures._save

    def note_panels(fig, path):  # the figure's panel titles, read before it is written
        panels[path.name] = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
        write_png(fig, path)
        plt.close(fig)

    monkeypatch.setattr(figures, "_save", note_panels)
    full = figures.curves(sec, hist, pal, tmp_path)
    assert panels.pop(full.file) == sorted(figures.CURVE_TITLES.values())
    assert (tmp_path / full.file).is_file()
    assert "(FNR and hardness: over the interval" in full.caption
    no_fnr = figures.curves(sec, hist.assign(fnr=float("nan")), pal, tmp_path)  # no labels
    assert panels.pop(no_fnr.file) == sorted(v for k, v in figures.CURVE_TITLES.items()
                                             if k != "fnr")
    assert "FNR" not in no_fnr.caption and "(hardness: over the interval" in no_fnr.caption
    assert figures.curves(sec, hist.drop(columns=["loss", "fnr", "hardness", "lr"]), pal,
                          tmp_path) is None


# --------------------------------------------------------------------------- the files
def test_report_json_markdown_and_html_carry_the_verdicts(tmp_path):
    from negbench.reports import figures, render

    rows = []
    for s in (0, 1):
        ref = bits(300, seed=s)
        fl = {"floor_knn_acc": 0.5, "floor_linear_acc": 0.6}
        rows += [run("in-batch", s, ref, tags=OK, wall_seconds=1.0, flops=1e9, **fl),
                 run("mixing", s, flip(ref, "1", 40), tags=OK, wall_seconds=2.0, flops=2e9,
                     **fl),
                 run("fn-free", s, flip(ref, "1", 20), tags={"negbench.oracle": "1", **OK},
                     wall_seconds=1.0, flops=1e9, **fl),
                 run("random", s, bits(50, seed=s), wall_seconds=1.0, flops=1e9,
                     tags={"negbench.health": "collapsed", "negbench.health_reason": "RankMe "
                           "1.02 < 1.5 (features on about a line)"}, uniform=-0.01,
                     rankme=1.02, **fl)]
    frame = pd.DataFrame(rows)
    for r in ("budget_spent", "budget_total"):
        frame[r] = 1536.0
    rep = build(Runs("demo", "1", "sqlite:///x.db", frame, {}))
    assert isinstance(rep, Report)
    sec = rep.sections[0]
    sec.figures = figures.draw(sec, pd.DataFrame(columns=["run_id", "step", "budget_fraction",
                                                          "loss", "fnr", "hardness", "lr"]),
                               figures.Palette(list(frame["strategy"])), tmp_path)
    assert any(f.kind == "pareto" for f in sec.figures)
    render.write(rep, tmp_path)
    js = json.loads((tmp_path / "report.json").read_text())["sections"][0]
    assert js["order"] == ["mixing", "in-batch"] and js["oracle"] == ["fn-free"]
    assert js["verdict"]["winner"] == "mixing" and js["verdict"]["comparisons"] == 1
    assert js["verdict"]["detectable"] > 0
    [c] = js["comparisons"]["knn_acc"]
    assert c["variant"] == "mixing" and c["p"] is not None and c["p_holm"] is not None
    assert c["test"] == "paired bootstrap over seeds and items"
    assert js["headroom"]["value"] == pytest.approx(20 / N)
    assert [d["strategy"] for d in js["did_not_train"]] == ["random"]
    assert js["floors"]["floor_knn_acc"]["mean"] == 0.5
    assert js["strategies"]["mixing"]["knn_acc_items"]["kind"] == \
        "hierarchical bootstrap over seeds and items"
    md = (tmp_path / "report.md").read_text()
    for title in ("### Floors: the untrained encoder on the same split and seeds",
                  "### Against in-batch: paired on the same test items, Holm-adjusted",
                  "### Oracle references (bounds, not ranked)",
                  "### Did not train (collapsed: not ranked)"):
        assert title in md
    assert "False-negative headroom (fn-free − in-batch, kNN accuracy): +5.56 points" in md
    html = (tmp_path / "index.html").read_text()
    assert html.count('<tr class="best">') == 1
    assert '<tr class="best"><td class="r">1</td><td>mixing</td>' in html
    assert markdown(rep) == md


def test_data_reads_items_json_and_leaves_older_runs_without(tmp_path):
    from mlflow import MlflowClient

    from negbench.reports import data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("items", artifact_location=(tmp_path / "art").as_uri())
    ids = []
    for seed, record in ((0, {"split": "test", "items": 4, "knn_correct": "0110",
                              "linear_correct": "1110"}), (1, None),
                         (2, {"split": "test", "items": 4, "knn_correct": "01x0"})):
        r = c.create_run(exp, tags={"suite": SUITE, "strategy": "in-batch", "seed": str(seed),
                                    "budget": BUDGET, "negbench.health": "ok"})
        c.log_metric(r.info.run_id, "knn_acc", 0.5)
        if record is not None:
            p = tmp_path / f"{seed}" / "items.json"
            p.parent.mkdir()
            p.write_text(json.dumps(record))
            c.log_artifact(r.info.run_id, str(p))
        c.set_terminated(r.info.run_id, "FINISHED")
        ids.append(r.info.run_id)
    f = data.load(uri, "items").frame.set_index("run_id")
    assert (f.loc[ids[0], "knn_correct"], f.loc[ids[0], "linear_correct"],
            f.loc[ids[0], "items_split"]) == ("0110", "1110", "test")
    for i in ids[1:]:  # no artifact; a malformed one
        assert pd.isna(f.loc[i, "knn_correct"]) and pd.isna(f.loc[i, "linear_correct"])
    assert "knn_correct" not in [k for k in f.columns if k not in data.RUN_COLUMNS]
    sec = build_section(SUITE, BUDGET, f.reset_index())
    assert md_table(table(sec, "ranking"))  # a mix of runs with and without items still reports
    assert math.isfinite(sec.data["strategies"]["in-batch"]["knn_acc"]["mean"])


def test_tuned_runs_that_are_the_defaults_are_said_to_be_so():
    ref = bits(300)
    rows = [run("in-batch", s, ref, tags=OK) for s in range(2)]
    same = [run("hcl", s, flip(ref, "1", 3), tags={"negbench.tuned_same": "1", **OK})
            | {"tuned": "t.toml"} for s in range(2)]
    t = table(section(rows + same), "tuned")
    (row,) = t.rows
    assert row[:5] == ["hcl", "the same runs (tuning kept the defaults)", row[2], "+0.00", "2"]
    # without the tag (runs recorded before it, or no default run in the spec): not claimed
    plain = [r | {"tags": dict(OK)} for r in same]
    (row,) = table(section(rows + plain), "tuned").rows
    assert row[1] == "no default run" and row[3] == "–"


def test_a_filtered_tuned_variant_is_paired_with_the_same_filter_default():
    ref = bits(300)
    sg = {"fn_filter": "self-guided"}
    rows = [run("in-batch", s, ref, tags=OK) for s in range(2)]
    rows += [run("semi-hard", s, flip(ref, "1", 2), tags=OK) for s in range(2)]  # no filter
    rows += [run("semi-hard", s, flip(ref, "1", 3 + s), tags=OK) | sg
             | {"variant": "semi-hard x self-guided"} for s in range(2)]
    rows += [run("semi-hard", s, flip(ref, "1", 9), tags=OK) | sg | {"tuned": "t.toml"}
             | {"variant": "semi-hard x self-guided (tuned)"} for s in range(2)]
    (row,) = table(section(rows), "tuned").rows
    assert row[0] == "semi-hard x self-guided"
    # against the filtered default runs (3 and 4 more right than ref) the tuned ones (9 more)
    # lead by 5.5 of 360 items, +1.53 points; against the unfiltered ones (2 more) it would be
    # +1.94
    assert row[3] == "+1.53", row


def test_a_tuned_variant_is_dashed_only_beside_its_default_runs():
    from negbench.reports import figures

    ref = bits(300)
    tuned = {"tuned": "t.toml"}
    rows = [run("in-batch", 0, ref, tags=OK) | tuned, run("hcl", 0, flip(ref, "1", 2), tags=OK),
            run("hcl", 1, flip(ref, "1", 3), tags=OK) | tuned | {"variant": "hcl (tuned)"},
            run("semi-hard", 0, flip(ref, "1", 4), tags=OK) | tuned
            | {"fn_filter": "self-guided", "variant": "semi-hard x self-guided"}]
    sec = section(rows)
    pal = figures.Palette(["in-batch", "hcl", "semi-hard"])
    assert pal.style(sec, "hcl (tuned)")["linestyle"] == "--"
    assert pal.style(sec, "hcl")["linestyle"] == "-"
    assert pal.style(sec, "in-batch")["linestyle"] == "-"  # every in-batch run tuned: plain
    # a filtered strategy all of whose runs are tuned keeps its plain (filtered) label
    assert pal.style(sec, "semi-hard x self-guided")["linestyle"] == "-"
    assert [sec.data["strategies"][v]["tuned_apart"] for v in
            ("hcl (tuned)", "hcl", "in-batch", "semi-hard x self-guided")] == [
        True, False, False, False]
