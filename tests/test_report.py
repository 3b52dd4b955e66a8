"""`negbench report`: the comparison report of tracked runs.

A real small ablation on digits (in-batch, hcl, memory-bank, 2 seeds, and a random cell that
diverges) runs once for this module into a sqlite mlflow store, with a one-seed experiment
beside it (one of its runs tagged as a tuned config) and an experiment whose only run failed.
Every number in the report's tables is checked against the values MlflowClient returns; the HTML
is opened in Debian's Chromium; the statistics are checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

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
        extra_tags={"negbench.tuned": TUNED_EXPORT})
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


def by_strategy(runs) -> dict[str, dict[int, dict]]:
    out: dict = {}
    for r in runs:
        if r.info.status == "FINISHED":
            label = r.data.tags["strategy"] + (" (tuned)" if "negbench.tuned" in r.data.tags
                                               else "")
            out.setdefault(label, {})[int(r.data.tags["seed"])] = r.data.metrics
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
        "peak memory (MB)": ("peak_mem_mb", 1)}


def test_every_number_in_the_tables_equals_mlflow(store, ablation_report):
    runs = tracked(store.uri, "ablation")
    per = by_strategy(runs)
    assert set(per) == {"in-batch", "hcl", "memory-bank"}
    md = (ablation_report / "report.md").read_text()
    js = json.loads((ablation_report / "report.json").read_text())
    tables = md_tables(md)
    sec = "digits · samples=1536"
    seen = set()

    def table(name: str, section: str = sec):
        seen.add((section, name))
        return tables[(section, name)]

    acc = {s: mean(m["knn_acc"] for m in per[s].values()) for s in per}

    # ranking: mean ± half-width over the 2 seeds, best kNN first
    headers, rows = table("Ranking by kNN accuracy")
    assert headers[:3] == ["rank", "strategy", "seeds"] and set(headers[3:]) == set(RANKED)
    assert [r[1] for r in rows] == sorted(per, key=lambda s: (-acc[s], s))
    for rank, row in enumerate(rows, 1):
        s = row[1]
        assert row[0] == str(rank) and row[2] == "2"
        for h, cell in zip(headers[3:], row[3:], strict=True):
            a, b = (per[s][seed][RANKED[h]] for seed in (0, 1))
            check(cell, 100 * (a + b) / 2, 100 * half_2(a, b))
            j = js["sections"][0]["strategies"][s][RANKED[h]]
            assert j["mean"] == pytest.approx((a + b) / 2, rel=1e-12)
            assert j["half"] == pytest.approx(half_2(a, b), rel=1e-9, abs=1e-12)

    # the paired t-test against in-batch, matched by seed
    headers, rows = table("Against in-batch: paired t-test matched by seed")
    assert headers == ["strategy", "pairs", "Δ kNN accuracy (points)", "95% CI of Δ", "p",
                       "Δ linear accuracy (points)", "95% CI of Δ", "p"]
    assert sorted(r[0] for r in rows) == sorted(set(per) - {"in-batch"})
    for row in rows:
        s = row[0]
        assert row[1] == "2"
        for k, (dcell, cicell, pcell) in zip(("knn_acc", "linear_acc"),
                                             (row[2:5], row[5:8]), strict=True):
            d = [per[s][seed][k] - per["in-batch"][seed][k] for seed in (0, 1)]
            md_, se = mean(d), abs(d[0] - d[1]) / 2
            check(dcell, 100 * md_)
            jp = js["sections"][0]["strategies"][s]["vs_reference"][k]
            assert jp["test"] == "paired t-test" and jp["n"] == 2
            assert jp["mean_diff"] == pytest.approx(md_, rel=1e-9, abs=1e-15)
            if se <= 1e-12:  # equal differences: no t statistic
                assert pcell == "undefined" and cicell == "–"
                continue
            check(cicell, 100 * (md_ - T1_975 * se), 100 * (md_ + T1_975 * se))
            p = cauchy_p(md_ / se)
            assert jp["p"] == pytest.approx(p, rel=1e-6)
            assert pcell == "< 0.001" if p < 0.001 else agrees(pcell, p), (pcell, p)

    # negatives and cost, and the Pareto fronts
    headers, rows = table("Negatives and cost")
    assert headers[0] == "strategy" and headers[-1] == "Pareto front"
    assert set(headers[1:-1]) == set(COST)
    means = {s: {k: mean(m[k] for m in per[s].values()) for k, _ in COST.values()} for s in per}
    fronts = {"FLOPs": pareto({s: means[s]["flops"] for s in per}, acc),
              "wall-clock": pareto({s: means[s]["wall_seconds"] for s in per}, acc)}
    for row in rows:
        s = row[0]
        for h, cell in zip(headers[1:-1], row[1:-1], strict=True):
            key, scale = COST[h]
            check(cell, scale * means[s][key])
        assert set(row[-1].split(" & ")) - {"–"} == {n for n, f in fronts.items() if s in f}
    assert {k: set(v) for k, v in js["sections"][0]["pareto"].items()} == \
        {"flops": fronts["FLOPs"], "wall_seconds": fronts["wall-clock"]}

    # FNR by hardness decile
    headers, rows = table("FNR (%) by hardness decile")
    assert headers == ["strategy", "D1 (easiest)", *(f"D{i}" for i in range(2, 10)),
                       "D10 (hardest)"]
    for row in rows:
        s = row[0]
        for i, cell in enumerate(row[1:]):
            vals = [m[f"fnr_decile_{i}"] for m in per[s].values() if f"fnr_decile_{i}" in m]
            if vals:
                check(cell, 100 * mean(vals))
            else:
                assert cell == "–"

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

    def one(key: str) -> str:
        vals = {t.get(key, "not recorded") for t in tags}
        assert len(vals) == 1
        return vals.pop()

    assert prov["git commit"] == one("git_commit")
    assert prov["command"] == " ".join(one("negbench.command").split())
    for label, key in (("device", "device"), ("host", "host"), ("python", "python"),
                       ("torch version", "version.torch"),
                       ("mlflow version", "version.mlflow")):
        assert prov[label] == one(key)
    assert len(rows) == 5 + len({k for t in tags for k in t if k.startswith("version.")})

    # no table left unchecked
    assert set(tables) == seen, set(tables) - seen


def test_headline_names_the_winner_its_margin_and_the_test(store, ablation_report):
    md = (ablation_report / "report.md").read_text()
    js = json.loads((ablation_report / "report.json").read_text())
    sec = js["sections"][0]
    winner, runner = sec["order"][:2]
    per = by_strategy(tracked(store.uri, "ablation"))
    lead = 100 * (mean(m["knn_acc"] for m in per[winner].values())
                  - mean(m["knn_acc"] for m in per[runner].values()))
    headline = sec["headline"]
    assert headline.startswith(f"**{winner}** ranks first on digits")
    assert f"runner-up, {runner}, by {lead:.2f} points" in headline
    assert "paired t-test" in headline or "t statistic is undefined" in headline
    assert headline in md
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
def test_one_seed_says_no_interval_can_be_given(store, tmp_path, capsys):
    out = make_report(store, "one-seed", tmp_path / "rep", capsys)
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    js = json.loads((out / "report.json").read_text())
    tables = md_tables(md)
    sec = "digits · samples=1536"
    assert "no interval can be given" in md and "no interval can be given" in html
    assert "one seed: no interval can be given" in js["sections"][0]["headline"]
    headers, rows = tables[(sec, "Ranking by kNN accuracy")]
    per = by_strategy(tracked(store.uri, "one-seed"))
    assert {r[1] for r in rows} == set(per) == {"in-batch", "hcl", "in-batch (tuned)"}
    for row in rows:
        assert row[2] == "1"
        for h, cell in zip(headers[3:], row[3:], strict=True):
            assert "±" not in cell  # every row has one seed: said once, in the table's note
            check(cell, 100 * per[row[1]][0][RANKED[h]])
    assert "one seed per strategy: the values of single runs; no interval can be given" in md
    for s in js["sections"][0]["strategies"].values():
        assert s["knn_acc"]["half"] is None and s["knn_acc"]["low"] is None
    # one pair: no test
    _, rows = tables[(sec, "Against in-batch: paired t-test matched by seed")]
    assert rows and all(r[1] == "1" and r[4] == r[7] == "too few pairs" for r in rows)
    for r in rows:
        check(r[2], 100 * (per[r[0]][0]["knn_acc"] - per["in-batch"][0]["knn_acc"]))
    # tuned against default
    headers, rows = tables[(sec, "Tuned against default")]
    assert headers == ["strategy", "default kNN accuracy (%)", "tuned kNN accuracy (%)",
                       "Δ (points)", "pairs", "p", "tuning export"]
    assert len(rows) == 1
    s, default, tuned, delta, pairs, p, export = rows[0]
    d, t = per["in-batch"][0]["knn_acc"], per["in-batch (tuned)"][0]["knn_acc"]
    assert (s, pairs, p, export) == ("in-batch", "1", "too few pairs", TUNED_EXPORT)
    check(default, 100 * d)
    check(tuned, 100 * t)
    check(delta, 100 * (t - d))


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
    assert none.n == 0 and not none.ok


def test_pareto_front_against_hand_computed_values():
    cost = [1.0, 2.0, 3.0, 2.0, 0.5, float("nan")]
    acc = [0.5, 0.7, 0.6, 0.7, 0.4, 0.99]
    # 0: cheapest but one, 1 and 3: equal (neither dominates), 2: dominated by 1 (costs more,
    # worth less), 4: the cheapest, 5: no cost recorded
    assert stats.pareto_front(cost, acc) == [True, True, False, True, True, False]
    assert stats.pareto_front([1.0, 1.0], [0.5, 0.6]) == [False, True]
