"""`negbench report`: the comparison report of tracked runs.

A real small ablation on digits (in-batch, hcl, memory-bank, 2 seeds, and a random cell that
diverges) runs once for this module into a sqlite mlflow store, with a one-seed experiment
beside it (one of its runs tagged as a tuned config) and an experiment whose only run failed.
Every number in the report's tables is checked against the values MlflowClient returns, and each
per-item interval and test against negbench.reports.stats applied to the runs' items.json, read
back with MlflowClient; the headline's verdict against what those statistics say; the HTML is
opened in Debian's Chromium; the statistics are checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import experiment_runs

from negbench.harness.cli import main as negbench
from negbench.reports import stats
from negbench.reports.cli import main as report

# Student's t with 1 degree of freedom is the Cauchy distribution: closed forms for 2 seeds
T1_975 = math.tan(math.pi * 0.475)  # 12.7062...


def cauchy_p(t: float) -> float:
    """Two-sided p of Student's t with 1 degree of freedom."""
    return 1 - 2 / math.pi * math.atan(abs(t))


COMMON = '''
suites = ["digits"]
budget = "samples=1536"
[overrides]
"batch_size" = 128
"log_every" = 2
"eval.linear_epochs" = 20
'''
DIVERGE = '''
[strategy.random]
"optim.lr" = 1e12
"objective.temperature" = 0.01
'''
ABLATION = ('name = "ablation"\nstrategies = ["in-batch", "hcl", "memory-bank", "random"]\n'
            'seeds = 2\n' + COMMON + DIVERGE)
ALL_FAILED = 'name = "all-failed"\nstrategies = ["random"]\nseeds = 1\n' + COMMON + DIVERGE
ONE_SEED = 'name = "one-seed"\nstrategies = ["in-batch", "hcl"]\nseeds = 1\n' + COMMON
TUNED_EXPORT = "tuned-in-batch.toml"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from negbench.harness.config import build_config, parse_budget
    from negbench.harness.runner import run

    d = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    for name, text, code in (("ablation", ABLATION, 1), ("all-failed", ALL_FAILED, 1),
                             ("one-seed", ONE_SEED, 0)):
        spec = d / f"{name}.toml"
        spec.write_text(text)
        assert negbench(["ablate", str(spec), "--tracking-uri", uri, "--no-progress"]) == code
    # a tuned config of in-batch, as a tuning export's run records it
    cfg = build_config("digits", "in-batch", seed=0, budget=parse_budget("samples=1536"),
                       sets={"batch_size": "128", "log_every": "2", "eval.linear_epochs": "20",
                             "optim.lr": "0.004"})
    run(cfg, tracking_uri=uri, experiment="one-seed",
        extra_tags={"negbench.tuned": TUNED_EXPORT, "negbench.tuned_val": "0.95 0.9611 20"})
    return SimpleNamespace(uri=uri, dir=d)


def make_report(store, experiment: str | None, out: Path, capsys) -> Path:
    args = ["--tracking-uri", store.uri, "--out", str(out), "--no-progress"]
    if experiment:
        args += ["--experiment", experiment]
    assert report(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(printed) == (out / "index.html").resolve()
    return out


@pytest.fixture(scope="module")
def ablation_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-ablation")
    assert report(["--experiment", "ablation", "--tracking-uri", store.uri, "--out", str(out),
                   "--no-progress"]) == 0
    return out


# --------------------------------------------------------------------------- reading back
def tracked(uri: str, experiment: str):
    return experiment_runs(uri, experiment)


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def md_tables(text: str) -> dict[tuple[str, str], tuple[list[str], list[list[str]]]]:
    """(## section, ### table) -> (headers, rows) of every table in report.md."""
    out: dict = {}
    section = table = None
    for line in text.splitlines():
        if line.startswith("## "):
            section, table = line[3:].strip(), None
        elif line.startswith("### "):
            table = line[4:].strip()
        elif line.startswith("|"):
            cells = split_row(line)
            key = (section, table)
            if key not in out:
                out[key] = (cells, [])
            elif not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                out[key][1].append(cells)
    return out


NUM = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?")


def numbers(cell: str) -> list[str]:
    return NUM.findall(cell)


def agrees(token: str, expected: float) -> bool:
    """``token`` (as printed) is ``expected`` at the precision it is printed with."""
    x = float(token.replace(",", ""))
    mant, _, exp = token.replace(",", "").partition("e")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    ulp = 10.0 ** (-decimals) * (10.0 ** int(exp) if exp else 1.0)
    return abs(x - expected) <= 0.5 * ulp * (1 + 1e-9) + 1e-12 * abs(expected)


def check(cell: str, *expected: float) -> None:
    toks = numbers(cell)
    assert len(toks) >= len(expected), (cell, expected)
    for tok, e in zip(toks, expected, strict=False):
        assert agrees(tok, e), f"{cell!r}: {tok} is not {e!r}"


def label_of(r) -> str:
    """A run's variant as the report names it: the strategy, '(tuned)' for a tuned config."""
    return r.data.tags["strategy"] + (" (tuned)" if "negbench.tuned" in r.data.tags else "")


def by_strategy(runs) -> dict[str, dict[int, dict]]:
    out: dict = {}
    for r in runs:
        if r.info.status == "FINISHED":
            out.setdefault(label_of(r), {})[int(r.data.tags["seed"])] = r.data.metrics
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def half_2(a: float, b: float) -> float:
    """Half-width of the 95% t interval of two values: t(0.975, 1) * s / sqrt(2)."""
    return T1_975 * abs(a - b) / 2


def pareto(cost: dict[str, float], acc: dict[str, float]) -> set[str]:
    return {s for s in cost if not any(
        cost[o] <= cost[s] and acc[o] >= acc[s] and (cost[o] < cost[s] or acc[o] > acc[s])
        for o in cost if o != s)}


# --------------------------------------------------------------------------- (1) numbers
RANKED = {"kNN accuracy (%)": "knn_acc", "linear accuracy (%)": "linear_acc"}
COST = {"FNR (%)": ("fnr", 100), "weighted FNR (%)": ("fnr_weighted", 100),
        "hardness (cos)": ("hardness", 1), "wall-clock (s)": ("wall_seconds", 1),
        "FLOPs": ("flops", 1), "samples/s": ("samples_per_second", 1),
        "peak memory (MB)": ("peak_mem_mb", 1), "peak CUDA memory (MB)": ("peak_cuda_mb", 1)}
# per-item correctness: each run's items.json holds one '0'/'1' string per probe
ITEMS = {"knn_acc": "knn_correct", "linear_acc": "linear_correct"}
# the floors table: its rows (figure, metric, scale), in the report's order
FLOORS = (("kNN accuracy (%)", "knn_acc", 100), ("linear accuracy (%)", "linear_acc", 100),
          ("uniformity", "uniform", 1), ("RankMe", "rankme", 1), ("alignment", "align", 1))
DIAG = (("uniform", 1), ("rankme", 1), ("align", 1), ("hardness", 1), ("knn_acc", 100),
        ("floor_knn_acc", 100))
REF = "in-batch"
SEC = "digits · samples=1536"
WHERE = "digits (samples=1536)"
RANKING = "Ranking by kNN accuracy"
FLOORS_TABLE = "Floors: the untrained encoder on the same split and seeds"
AGAINST = "Against in-batch: paired on the same test items, Holm-adjusted"
DNT_TABLE = "Did not train (collapsed: not ranked)"


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def check_p(cell: str, p: float) -> None:
    """A p-value cell: '< 0.001', else three decimals."""
    if p < 0.001:
        assert cell == "< 0.001", (cell, p)
    else:
        assert re.fullmatch(r"\d\.\d{3}", cell) and agrees(cell, p), (cell, p)


def check_p_words(words: str, p: float) -> None:
    """'p = 0.389' or 'p < 0.001' as a headline writes it (without the 'p ')."""
    if p < 0.001:
        assert words == "< 0.001", (words, p)
    else:
        assert words.startswith("= "), words
        check_p(words[2:], p)


def health_of(runs) -> dict[str, list[tuple[int, str, str]]]:
    """variant -> (seed, verdict, reason) of its finished runs, from the tags mlflow returns."""
    out: dict = {}
    for r in runs:
        if r.info.status == "FINISHED":
            t = r.data.tags
            assert t["negbench.health"] in ("ok", "degraded", "collapsed"), t
            out.setdefault(label_of(r), []).append(
                (int(t["seed"]), t["negbench.health"], t.get("negbench.health_reason", "")))
    return {v: sorted(h) for v, h in out.items()}


def read_items(uri: str, runs, dst: Path) -> dict[str, dict[str, dict[int, np.ndarray]]]:
    """variant -> metric -> {seed: per-item correctness}: each finished run's items.json,
    downloaded with mlflow's own client; each vector's mean is the run's tracked accuracy."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    out: dict = {}
    for r in runs:
        if r.info.status != "FINISHED":
            continue
        d = dst / r.info.run_id
        d.mkdir(parents=True)
        rec = json.loads(Path(c.download_artifacts(r.info.run_id, "items.json", str(d)))
                         .read_text())
        assert rec["split"] == "test"
        for key, col in ITEMS.items():
            bits = rec[col]
            assert len(bits) == rec["items"] and set(bits) <= {"0", "1"}
            vec = np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")
            assert vec.mean() == pytest.approx(r.data.metrics[key], abs=1e-6)
            out.setdefault(label_of(r), {}).setdefault(key, {})[int(r.data.tags["seed"])] = vec
    return out


def roles(runs, per, health) -> tuple[list[str], list[str]]:
    """(ranked, did not train), each best mean kNN accuracy first: a variant any of whose runs
    is tagged collapsed did not train. These stores hold no oracle reference."""
    assert not any(r.data.tags.get("negbench.oracle") == "1" for r in runs)
    knn = {v: mean(m["knn_acc"] for m in per[v].values()) for v in per}
    everyone = sorted(per, key=lambda v: (-knn[v], v))
    dnt = [v for v in everyone if any(h == "collapsed" for _, h, _ in health[v])]
    return [v for v in everyone if v not in dnt], dnt


def expected_health(h: list[tuple[int, str, str]]) -> str:
    """The ranking's health cell of a variant's runs (none of them collapsed)."""
    deg = [x for x in h if x[1] == "degraded"]
    if deg:
        reasons = "; ".join(dict.fromkeys(r for _, _, r in deg if r))
        return f"degraded ({len(deg)} of {plural(len(h), 'seed', 'seeds')}): {reasons}"
    assert all(x[1] == "ok" for x in h), h
    return "ok"


def comparisons(items, order) -> dict[str, dict[str, tuple]]:
    """metric -> variant -> (stats.paired_items of variant − in-batch, its Holm-adjusted p
    over the section's comparisons of that metric)."""
    out = {}
    for key in ITEMS:
        res = {v: stats.paired_items(items[v][key], items[REF][key]) for v in order if v != REF}
        adj = stats.holm([r.p for r in res.values()])
        out[key] = {v: (r, a) for (v, r), a in zip(res.items(), adj, strict=True)}
    return out


def verdict_of(comps) -> dict:
    """Winner (the largest positive kNN lead with Holm p < 0.05), leads and falls beyond noise,
    and the smallest detectable difference (the median standard error, Holm over the family)."""
    fam = comps["knn_acc"]
    beyond = [v for v, (_, a) in fam.items() if a < 0.05]
    above = sorted((v for v in beyond if fam[v][0].mean_diff > 0),
                   key=lambda v: (-fam[v][0].mean_diff, v))
    below = sorted((v for v in beyond if fam[v][0].mean_diff < 0),
                   key=lambda v: (fam[v][0].mean_diff, v))
    se = statistics.median(r.se for r, _ in fam.values() if r.se > 0)
    return {"winner": above[0] if above else None, "above": above, "below": below,
            "comparisons": len(fam), "detectable": stats.detectable(se, len(fam), 0.95, 0.8)}


def check_section(md: str, tables, jsec: dict, runs, items) -> set:
    """Every table of the section 'digits · samples=1536' against mlflow's values and the
    per-item statistics of the runs' items.json; returns the tables it checked."""
    per = by_strategy(runs)
    health = health_of(runs)
    order, dnt = roles(runs, per, health)
    comps = comparisons(items, order)
    n_items = {len(vec) for v in items for by_seed in items[v].values()
               for vec in by_seed.values()}
    assert len(n_items) == 1
    n_items = n_items.pop()
    seen = set()

    def table(name: str):
        seen.add((SEC, name))
        return tables[(SEC, name)]

    assert jsec["order"] == order and jsec["oracle"] == []
    knn = {v: mean(m["knn_acc"] for m in per[v].values()) for v in per}

    # ranking: health, the per-item intervals of the accuracies, kNN − floor
    headers, rows = table(RANKING)
    assert headers == ["rank", "strategy", "seeds", "health", *RANKED, "kNN − floor (points)"]
    assert [r[1] for r in rows] == order
    not_above = []
    for rank, row in enumerate(rows, 1):
        s = row[1]
        seeds = sorted(per[s])
        assert row[0] == str(rank) and row[2] == str(len(seeds))
        assert row[3] == expected_health(health[s])
        j = jsec["strategies"][s]
        assert j["role"] == "ranked"
        for h, cell in zip(RANKED, row[4:6], strict=True):
            key = RANKED[h]
            vals = [per[s][seed][key] for seed in seeds]
            iv = stats.item_interval(items[s][key])
            if len(seeds) == 1:
                vec = items[s][key][seeds[0]]
                low, high = stats.binomial_ci(int(vec.sum()), len(vec))
                assert iv.exact == pytest.approx((low, high), rel=1e-12)
                kind = "exact binomial (Clopper-Pearson)"
            else:
                low, high = iv.low, iv.high
                kind = "hierarchical bootstrap over seeds and items"
            assert low <= iv.mean <= high
            assert re.fullmatch(r"\S+ \[\S+, \S+\]", cell), cell
            check(cell, 100 * mean(vals), 100 * low, 100 * high)
            assert j[key]["mean"] == pytest.approx(mean(vals), rel=1e-12)
            if len(seeds) == 2:
                assert j[key]["half"] == pytest.approx(half_2(*vals), rel=1e-9, abs=1e-12)
            else:
                assert j[key]["half"] is None and j[key]["low"] is None
            ji = j[f"{key}_items"]
            assert (ji["seeds"], ji["items"], ji["kind"]) == (len(seeds), n_items, kind)
            assert ji["mean"] == pytest.approx(iv.mean, rel=1e-12)
            assert ji["shown"] == pytest.approx([low, high], rel=1e-12)
        margin = {seed: per[s][seed]["knn_acc"] - per[s][seed]["floor_knn_acc"]
                  for seed in seeds}
        bad = [seed for seed in seeds if margin[seed] <= 0]
        value, _, rest = row[6].partition(" ")
        check(value, 100 * mean(margin.values()))
        assert value[0] in "+-"
        if bad:
            not_above.append(s)
            assert rest == (f"— NOT above the floor ({len(bad)} of "
                            f"{plural(len(seeds), 'seed', 'seeds')}): learned nothing"), row[6]
        else:
            assert rest == "", row[6]
        assert j["floor_margin"]["mean"] == pytest.approx(mean(margin.values()), abs=1e-12)
        assert j["floor_margin"]["not_above"] == bad
    assert (f"over seeds and the {n_items} test items (one item = {100 / n_items:.2f} points)"
            in md)
    if not_above:
        assert (f"{', '.join(not_above)} {'does' if len(not_above) == 1 else 'do'} not beat the "
                "untrained encoder's kNN accuracy on every seed") in md
    else:
        assert "not beat the untrained encoder" not in md

    # floors: each seed's floor (the mean of its runs), then the mean over seeds
    def floor_mean(key: str) -> float | None:
        by_seed: dict = {}
        for v in per:
            for seed, m in per[v].items():
                if key in m:
                    by_seed.setdefault(seed, []).append(m[key])
        return mean(mean(x) for x in by_seed.values()) if by_seed else None

    headers, rows = table(FLOORS_TABLE)
    assert headers == ["figure", "untrained encoder (floor)", "raw inputs",
                       "ranked strategies (lowest – highest mean)"]
    expected = [f for f in FLOORS if floor_mean(f"floor_{f[1]}") is not None]
    assert [r[0] for r in rows] == [f[0] for f in expected] and len(expected) == len(FLOORS)
    for (_, key, scale), row in zip(expected, rows, strict=True):
        check(row[1], scale * floor_mean(f"floor_{key}"))
        raw = floor_mean("raw_knn_acc") if key == "knn_acc" else None
        if raw is None:
            assert row[2] == "–"
        else:
            check(row[2], scale * raw)
        ranked = [mean(m[key] for m in per[v].values()) for v in order]
        assert len(numbers(row[3])) == 2
        check(row[3], scale * min(ranked), scale * max(ranked))
        assert jsec["floors"][f"floor_{key}"]["mean"] == pytest.approx(
            floor_mean(f"floor_{key}"), rel=1e-9)
    seeds = sorted({seed for v in per for seed in per[v]})
    assert (f"mean over the section's {plural(len(seeds), 'seed', 'seeds')} "
            f"({', '.join(map(str, seeds))}) of the untrained encoder") in md

    # against in-batch on the same test items, Holm-adjusted
    headers, rows = table(AGAINST)
    assert headers == ["strategy", "seeds", "test",
                       "Δ kNN accuracy (points)", "95% interval of Δ", "p", "Holm p",
                       "Δ linear accuracy (points)", "95% interval of Δ", "p", "Holm p",
                       "verdict (kNN)"]
    assert [r[0] for r in rows] == [v for v in order if v != REF]
    for row in rows:
        v = row[0]
        shared = sorted(per[v].keys() & per[REF].keys())
        rk = comps["knn_acc"][v][0]
        assert row[1] == str(len(shared)) == str(rk.seeds) and rk.items == n_items
        assert row[2] == (f"exact McNemar on {n_items} test items, 1 seed" if len(shared) == 1
                          else f"paired bootstrap over {len(shared)} seeds and {n_items} "
                               "test items")
        for key, cells in zip(ITEMS, (row[3:7], row[7:11]), strict=True):
            r, adj = comps[key][v]
            assert r.test == ("exact McNemar" if len(shared) == 1
                              else "paired bootstrap over seeds and items")
            d = mean(per[v][seed][key] - per[REF][seed][key] for seed in shared)
            assert r.mean_diff == pytest.approx(d, abs=1e-6)
            check(cells[0], 100 * d)
            assert cells[0][0] in "+-" and re.fullmatch(r"\[\S+, \S+\]", cells[1])
            check(cells[1], 100 * r.low, 100 * r.high)
            check_p(cells[2], r.p)
            check_p(cells[3], adj)
            jc = jsec["strategies"][v]["comparison"][key]
            assert (jc["test"], jc["seeds"], jc["items"], jc["basis"]) == \
                (r.test, r.seeds, n_items, "items")
            for name, x in (("diff", r.mean_diff), ("low", r.low), ("high", r.high),
                            ("se", r.se), ("p", r.p), ("p_holm", adj)):
                assert jc[name] == pytest.approx(x, rel=1e-9, abs=1e-15), name
            assert jc["beyond_noise"] == (adj < 0.05)
        r, adj = comps["knn_acc"][v]
        assert row[11] == ((("above" if r.mean_diff > 0 else "below") + f" {REF} beyond noise")
                           if adj < 0.05 else "within noise")
    m = len(comps["knn_acc"])
    assert (f"Holm's procedure over the section's {plural(m, 'comparison', 'comparisons')} "
            f"of ranked strategies with {REF}") in md
    v = verdict_of(comps)
    jv = jsec["verdict"]
    assert (jv["winner"], jv["above"], jv["below"], jv["comparisons"], jv["basis"]) == \
        (v["winner"], v["above"], v["below"], v["comparisons"], "items")
    assert jv["detectable"] == pytest.approx(v["detectable"], rel=1e-9)

    # did not train: the means over each variant's collapsed runs
    if dnt:
        headers, rows = table(DNT_TABLE)
        assert headers == ["strategy", "collapsed seeds", "uniformity", "RankMe", "alignment",
                           "hardness (cos)", "kNN accuracy (%)", "kNN floor (%)", "reason"]
        assert [r[0] for r in rows] == dnt
        for row in rows:
            bad = [(seed, why) for seed, h, why in health[row[0]] if h == "collapsed"]
            assert row[1] == (f"{len(bad)} of {len(per[row[0]])} ("
                              f"{'seed' if len(bad) == 1 else 'seeds'} "
                              f"{', '.join(str(seed) for seed, _ in bad)})")
            for (key, scale), cell in zip(DIAG, row[2:8], strict=True):
                check(cell, scale * mean(per[row[0]][seed][key] for seed, _ in bad))
            why = " ".join("; ".join(f"seed {seed}: {w}" for seed, w in bad).split())
            assert row[8] == why or (row[8].endswith("…") and why.startswith(row[8][:-1]))
    else:
        assert (SEC, DNT_TABLE) not in tables and jsec["did_not_train"] == []

    # negatives and cost, and the Pareto fronts of the ranked strategies
    listed = [*order, *dnt]
    label = {v: v for v in order} | {v: f"{v} (did not train)" for v in dnt}
    headers, rows = table("Negatives and cost")
    logged = [h for h, (k, _) in COST.items() if any(k in m for v in per
                                                       for m in per[v].values())]
    assert headers == ["strategy", *logged, "Pareto front"]
    assert [r[0] for r in rows] == [label[v] for v in listed]
    means = {s: {k: mean(m[k] for m in per[s].values()) for h, (k, _) in COST.items()
                 if h in logged} for s in listed}
    fronts = {"FLOPs": pareto({s: means[s]["flops"] for s in order}, knn),
              "wall-clock": pareto({s: means[s]["wall_seconds"] for s in order}, knn)}
    for s, row in zip(listed, rows, strict=True):
        for h, cell in zip(headers[1:-1], row[1:-1], strict=True):
            key, scale = COST[h]
            check(cell, scale * means[s][key])
        assert set(row[-1].split(" & ")) - {"–"} == {n for n, f in fronts.items() if s in f}
    assert {k: set(v) for k, v in jsec["pareto"].items()} == \
        {"flops": fronts["FLOPs"], "wall_seconds": fronts["wall-clock"]}

    # FNR by hardness decile
    headers, rows = table("FNR (%) by hardness decile")
    assert headers == ["strategy", "D1 (easiest)", *(f"D{i}" for i in range(2, 10)),
                       "D10 (hardest)"]
    assert [r[0] for r in rows] == [label[v] for v in listed]
    for s, row in zip(listed, rows, strict=True):
        for i, cell in enumerate(row[1:]):
            vals = [m[f"fnr_decile_{i}"] for m in per[s].values() if f"fnr_decile_{i}" in m]
            if vals:
                check(cell, 100 * mean(vals))
            else:
                assert cell == "–"
    return seen


def check_headline(headline: str, runs, items) -> None:
    """The headline's verdict is what the statistics say: a winner only when its lead over
    in-batch survives Holm's correction, else 'no strategy differs beyond noise' and the
    smallest difference these runs could have detected."""
    per = by_strategy(runs)
    order, dnt = roles(runs, per, health_of(runs))
    comps = comparisons(items, order)
    v = verdict_of(comps)
    fam = comps["knn_acc"]
    n = len(next(iter(items[REF]["knn_acc"].values())))
    cmp = re.escape(plural(v["comparisons"], "comparison", "comparisons"))
    pw = r"(< 0\.001|= \S+)"
    if v["winner"] is not None:
        w = v["winner"]
        r, adj = fam[w]
        assert r.mean_diff > 0 and adj < 0.05
        g = re.match(rf"\*\*{re.escape(w)}\*\* leads {REF} on {re.escape(WHERE)} by (\S+) points "
                     rf"of kNN accuracy \(95% interval \[(\S+), (\S+)\]; (.+?): p {pw}, "
                     rf"Holm-adjusted p {pw} over {cmp} with {REF}\)\. ", headline)
        assert g, headline
        check(g[1], 100 * r.mean_diff)
        check(g[2], 100 * r.low)
        check(g[3], 100 * r.high)
        check_p_words(g[5], r.p)
        check_p_words(g[6], adj)
        assert headline.count("**") == 2  # one strategy named
        return
    assert "**" not in headline and "leads in-batch on" not in headline  # nobody is named
    accs = [mean(m["knn_acc"] for m in per[x].values()) for x in order]
    dnt_words = (f" {plural(len(dnt), 'strategy', 'strategies')} did not train (collapsed) and "
                 f"{'is' if len(dnt) == 1 else 'are'} not ranked: see “Did not train”."
                 if dnt else "")
    best_diff = max(r.mean_diff for r, _ in fam.values())
    nearest = "the largest" if best_diff > 0 else "none is ahead; the closest"
    g = re.fullmatch(
        rf"On {re.escape(WHERE)}, no strategy "
        rf"{'differs from' if not v['below'] else 'leads'} {REF} beyond noise at this budget: "
        rf"the {len(order)} ranked strategies lie within (\S+)–(\S+)% kNN accuracy on {n} test "
        rf"items \(one item = (\S+) points\), and no lead over {REF} \({nearest}: (\S+) "
        rf"points\) survives Holm's correction over {cmp}\.(.*) The smallest difference these "
        rf"runs could have detected is about (\S+) points of kNN accuracy \(80% power, Holm "
        rf"over {cmp}\)\.(?: With one training seed .+? on this difference\.)?"
        rf"{re.escape(dnt_words)}", headline)
    assert g, headline
    check(g[1], 100 * min(accs))
    check(g[2], 100 * max(accs))
    check(g[3], 100 / n)
    check(g[4], 100 * max(r.mean_diff for r, _ in fam.values()))
    check(g[6], 100 * v["detectable"])
    below = g[5]
    if v["below"]:
        for b in v["below"]:
            r, adj = fam[b]
            h = re.search(rf"{re.escape(b)} \((\S+) points, Holm p {pw}\)", below)
            assert h, below
            check(h[1], 100 * r.mean_diff)
            check_p_words(h[2], adj)
        assert below.endswith(f" below {REF} beyond noise.")
    else:
        assert below == ""


def test_every_number_in_the_tables_equals_mlflow(store, ablation_report, tmp_path):
    runs = tracked(store.uri, "ablation")
    per = by_strategy(runs)
    assert set(per) == {"in-batch", "hcl", "memory-bank"}
    assert all(set(v) == {0, 1} for v in per.values())
    md = (ablation_report / "report.md").read_text()
    js = json.loads((ablation_report / "report.json").read_text())
    tables = md_tables(md)
    items = read_items(store.uri, runs, tmp_path / "items")
    assert set(items) == set(per)

    seen = check_section(md, tables, js["sections"][0], runs, items)

    def table(name: str, section: str):
        seen.add((section, name))
        return tables[(section, name)]

    # budget audit: every finished run, spent against total
    across = "Across the experiment"
    headers, rows = table("Budget audit", across)
    assert headers == ["suite", "strategy", "seed", "budget", "spent", "total", "verdict"]
    assert len(rows) == sum(len(v) for v in per.values()) == 6
    for row in rows:
        m = per[row[1]][int(row[2])]
        assert row[0] == "digits" and row[3] == "samples=1536"
        check(row[4], m["budget_spent"])
        check(row[5], m["budget_total"])
        assert m["budget_spent"] == m["budget_total"] == 1536 and row[6] == "exact"
    assert "all 6 finished runs spent exactly their budget" in md

    # failed runs with their failure tag
    headers, rows = table("Failed runs", across)
    failed = sorted((int(r.data.tags["seed"]), " ".join(r.data.tags["failure"].split()))
                    for r in runs if r.info.status == "FAILED")
    assert len(failed) == 2
    assert sorted((int(r[2]), r[6]) for r in rows) == failed
    assert all(r[1] == "random" and r[4] == "FAILED" for r in rows)

    # provenance: commit, command, hardware, versions
    headers, rows = table("Provenance", across)
    prov = dict((r[0], r[1]) for r in rows)
    tags = [r.data.tags for r in runs if r.info.status == "FINISHED"]

    def values(key: str) -> str:
        counts: dict = {}
        for t in tags:
            counts[t.get(key, "not recorded")] = counts.get(t.get(key, "not recorded"), 0) + 1
        if len(counts) == 1:
            return next(iter(counts))
        return "; ".join(f"{v} ({c} runs)" for v, c in sorted(counts.items(),
                                                                key=lambda kv: (-kv[1], kv[0])))

    assert prov["git commit"] == values("git_commit")
    assert prov["command"] == " ".join(values("negbench.command").split())
    for label, key in (("device", "device"), ("host", "host"), ("python", "python"),
                       ("torch version", "version.torch"),
                       ("mlflow version", "version.mlflow")):
        assert prov[label] == values(key)
    assert len(rows) == 5 + len({k for t in tags for k in t if k.startswith("version.")})

    # no table left unchecked
    assert set(tables) == seen, set(tables) - seen


def test_headline_names_a_winner_only_when_its_lead_survives_holm(store, ablation_report,
                                                                   tmp_path):
    md = (ablation_report / "report.md").read_text()
    js = json.loads((ablation_report / "report.json").read_text())
    sec = js["sections"][0]
    runs = tracked(store.uri, "ablation")
    check_headline(sec["headline"], runs, read_items(store.uri, runs, tmp_path / "items"))
    assert f"\n{sec['headline']}\n" in md  # under the section's title
    assert f"- [{SEC}](#digits-samples-1536): {sec['headline']}" in md  # and in the summary
    # the figures exist beside the report, as real PNGs, and report.md links them
    for f in sec["figures"]:
        assert (ablation_report / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({f})" in md
    assert {f.rsplit("-", 1)[-1] for f in sec["figures"]} >= {"pareto.png", "curves.png",
                                                              "fnr.png", "deciles.png"}


# --------------------------------------------------------------------------- (2) the browser
def test_html_opens_in_chromium_offline_without_errors(ablation_report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    index = (ablation_report / "index.html").resolve()
    text = index.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    console, errors, requests = [], [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, "
                                   "i.naturalWidth, i.src.slice(0, 22)])")
            title = page.title()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert title == "negbench report: ablation"
    assert [c for c in console if c[0] in ("error", "warning")] == []
    assert errors == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(images) == 4 and all(c and w > 0 and s == "data:image/png;base64," for c, w, s
                                    in images), images
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")


# --------------------------------------------------------------------------- (3) one seed
def test_one_seed_gives_the_exact_interval_and_the_mcnemar_test(store, tmp_path, capsys):
    from scipy.stats import binom

    out = make_report(store, "one-seed", tmp_path / "rep", capsys)
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    js = json.loads((out / "report.json").read_text())
    sec = js["sections"][0]
    tables = md_tables(md)
    runs = tracked(store.uri, "one-seed")
    per = by_strategy(runs)
    assert set(per) == {"in-batch", "hcl", "in-batch (tuned)"}
    assert all(set(v) == {0} for v in per.values())
    items = read_items(store.uri, runs, tmp_path / "items")
    seen = check_section(md, tables, sec, runs, items)
    check_headline(sec["headline"], runs, items)
    assert "no interval can be given" not in md  # one seed has its interval: the test items'

    # the ranking: the exact (Clopper-Pearson) interval of each run's k right of n test items
    _, rows = tables[(SEC, RANKING)]
    assert {r[1] for r in rows} == set(per)
    for row in rows:
        for key, cell in zip(ITEMS, row[4:6], strict=True):
            vec = items[row[1]][key][0]
            k, n = int(vec.sum()), len(vec)
            low, high = stats.binomial_ci(k, n)
            # its definition: P(X >= k | low) = P(X <= k | high) = 2.5%
            assert binom.sf(k - 1, n, low) == pytest.approx(0.025, rel=1e-6)
            assert binom.cdf(k, n, high) == pytest.approx(0.025, rel=1e-6)
            assert "±" not in cell and "no interval" not in cell
            check(cell, 100 * k / n, 100 * low, 100 * high)
            check(cell, 100 * per[row[1]][0][key])
            assert cell in html
            ji = sec["strategies"][row[1]][f"{key}_items"]
            assert ji["kind"] == "exact binomial (Clopper-Pearson)"
            assert ji["exact"] == ji["shown"] == pytest.approx([low, high], rel=1e-12)
    for text in (md, html):
        assert "with one seed the exact binomial (Clopper-Pearson) interval" in text

    # against in-batch: the exact McNemar test on the items exactly one of the two got right
    _, rows = tables[(SEC, AGAINST)]
    assert sorted(r[0] for r in rows) == ["hcl", "in-batch (tuned)"]
    for key, cols in (("knn_acc", slice(3, 7)), ("linear_acc", slice(7, 11))):
        ps = []
        for row in rows:
            a, b = items[row[0]][key][0], items[REF][key][0]
            a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
            mc = stats.mcnemar(a, b)
            assert (mc.a_only, mc.b_only, mc.n) == (a_only, b_only, len(a))
            d = a_only + b_only  # two-sided exact binomial test of a_only of d at 1/2
            hand = (min(1.0, 2 * math.fsum(math.comb(d, i) for i in range(min(a_only, b_only)
                                                                           + 1)) / 2 ** d)
                    if d else 1.0)
            assert mc.p == pytest.approx(hand, rel=1e-12)
            assert row[1] == "1" and row[2] == f"exact McNemar on {len(a)} test items, 1 seed"
            dcell, _, pcell, _ = row[cols]
            check(dcell, 100 * (a_only - b_only) / len(a))
            check(dcell, 100 * (per[row[0]][0][key] - per[REF][0][key]))
            check_p(pcell, mc.p)
            jc = sec["strategies"][row[0]]["comparison"][key]
            assert jc["test"] == "exact McNemar" and jc["p"] == pytest.approx(mc.p, rel=1e-12)
            ps.append(mc.p)
        for row, adj in zip(rows, stats.holm(ps), strict=True):
            check_p(row[cols][3], adj)
    assert "with one seed the exact McNemar test" in md

    # tuned against default: over seeds, so one pair gives no interval and no test
    headers, rows = tables[(SEC, "Tuned against default")]
    seen.add((SEC, "Tuned against default"))
    assert headers == ["strategy", "default kNN accuracy (%)", "tuned kNN accuracy (%)",
                       "Δ (points)", "pairs", "p", "tuning: validation kNN (%)",
                       "tuning export"]
    assert len(rows) == 1
    s, default, tuned, delta, pairs, p, val, export = rows[0]
    d, t = per["in-batch"][0]["knn_acc"], per["in-batch (tuned)"][0]["knn_acc"]
    assert (s, pairs, p, export) == ("in-batch", "1", "too few pairs", TUNED_EXPORT)
    assert val == "95.00 → 96.11 (20 trials)"  # the tag the spec copies from the export
    for cell, x in ((default, d), (tuned, t)):
        assert cell.endswith(" (1 seed: no interval)") and len(numbers(cell)) == 2
        check(cell, 100 * x, 1)
    check(delta, 100 * (t - d))
    assert {k for k in tables if k[0] == SEC} == seen  # no table of the section unchecked


def test_default_experiment_is_the_latest_and_bad_names_are_one_line(store, tmp_path, capsys):
    out = make_report(store, None, tmp_path / "latest", capsys)
    assert json.loads((out / "report.json").read_text())["experiment"] == "one-seed"
    for name, why in (("nope", "no experiment 'nope'"),
                      ("all-failed", "'all-failed' has no finished negbench run")):
        assert report(["--experiment", name, "--tracking-uri", store.uri, "--out",
                       str(tmp_path / name), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err
        assert all(f"{e} (" in err for e in ("ablation", "one-seed", "all-failed")), err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert report(["--experiment", "ablation", "--tracking-uri", store.uri, "--out",
                   str(blocker / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "cannot write" in err, err


def test_help_documents_the_default_experiment(capsys):
    with pytest.raises(SystemExit) as e:
        report(["--help"])
    assert e.value.code == 0
    assert "most recently started run" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- statistics
def test_interval_against_hand_computed_values():
    iv = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    # s = sqrt(5/3) = 1.2909944; t(0.975, 3) = 3.1824463 (tables); half = t * s / 2
    assert (iv.n, iv.mean) == (4, 2.5)
    assert iv.sd == pytest.approx(1.2909944487, rel=1e-9)
    assert iv.half == pytest.approx(3.1824463053 * 1.2909944487 / 2, rel=1e-8)
    assert (iv.low, iv.high) == pytest.approx((2.5 - iv.half, 2.5 + iv.half))
    two = stats.mean_ci([0.9, 0.8])  # s / sqrt(2) = 0.05, t(0.975, 1) = tan(0.475 pi)
    assert two.half == pytest.approx(12.7062047362 * 0.05, rel=1e-9)
    one = stats.mean_ci([0.93])
    assert (one.n, one.mean, one.sd, one.half, one.low) == (1, 0.93, None, None, None)
    assert stats.mean_ci([]).n == 0 and math.isnan(stats.mean_ci([]).mean)
    assert stats.mean_ci([0.5, float("nan"), 0.7]).n == 2  # a missing value is left out
    # accuracies k / 360 that are equal: a zero spread, not rounding noise
    same = stats.mean_ci([347 / 360, 1 - 13 / 360, 347 / 360])
    assert same.sd == 0.0 and same.half == 0.0


def test_paired_t_against_hand_computed_values():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 7: 0.5}
    b = {0: 0.80, 1: 0.75, 2: 0.82, 9: 0.1}
    p = stats.paired_t(a, b)  # seeds 0, 1, 2: d = 0.10, 0.05, 0.03
    assert p.seeds == (0, 1, 2) and p.n == 3 and p.df == 2
    sd = math.sqrt((0.04 ** 2 + 0.01 ** 2 + 0.03 ** 2) / 2)  # 0.0360555
    t = 0.06 / (sd / math.sqrt(3))  # 2.8823
    assert p.mean_diff == pytest.approx(0.06, rel=1e-9)
    assert p.t == pytest.approx(t, rel=1e-9) and p.t == pytest.approx(2.88231, abs=1e-5)
    # Student's t with 2 degrees of freedom: P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    assert p.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert p.p == pytest.approx(0.10224, abs=1e-4)
    assert p.half == pytest.approx(4.3026527 * sd / math.sqrt(3), rel=1e-6)
    assert p.ok and p.test == "paired t-test"
    few = stats.paired_t({0: 0.9, 1: 0.8}, {1: 0.7})
    assert few.n == 1 and not few.ok and "too few" in few.reason
    assert math.isnan(few.p) and few.mean_diff == pytest.approx(0.1)
    flat = stats.paired_t({0: 350 / 360, 1: 352 / 360}, {0: 348 / 360, 1: 350 / 360})
    assert not flat.ok and "all equal" in flat.reason and math.isnan(flat.t)
    none = stats.paired_t({0: 1.0}, {1: 1.0})
    assert none.n == 0 and not none.ok and "no seed in common" in none.reason
    # seeds shared, metric missing (runs without a linear probe): said so, not "no seed"
    nan = float("nan")
    missing = stats.paired_t({0: nan, 1: nan}, {0: nan, 1: nan})
    assert missing.n == 0 and not missing.ok and "not recorded" in missing.reason


def test_pareto_front_against_hand_computed_values():
    cost = [1.0, 2.0, 3.0, 2.0, 0.5, float("nan")]
    acc = [0.5, 0.7, 0.6, 0.7, 0.4, 0.99]
    # 0: cheapest but one, 1 and 3: equal (neither dominates), 2: dominated by 1 (costs more,
    # worth less), 4: the cheapest, 5: no cost recorded
    assert stats.pareto_front(cost, acc) == [True, True, False, True, True, False]
    assert stats.pareto_front([1.0, 1.0], [0.5, 0.6]) == [False, True]
