"""Issue 17's false-negative pressure figures: from an experiment made by `specs/fn-pressure.toml`
(or any spec that sweeps ``suite.classes``), each strategy's gain over ``in-batch`` at every
grouping, with a hierarchical bootstrap interval over seeds and test items, and whether the gain
grows as the number of groups falls (Chuang et al. 2020's claim). Fewer groups make an easier
task, so each gain is also given as the share of the baseline's errors it removes.

    .venv/bin/negbench ablate specs/fn-pressure.toml --workers 2
    .venv/bin/python bench/fn_pressure.py [--experiment fn-pressure] [--tracking-uri URI]
        [--metric knn_acc|linear_acc] [--baseline in-batch]
"""

from __future__ import annotations

import argparse
import re

from negbench.reports.data import ITEM_COLUMNS, latest_per_seed, load
from negbench.reports.stats import item_interval, paired_items

POINT = re.compile(r"^(?P<suite>.+) \(suite\.classes=(?P<k>\d+)\)$")


def _pct(v: float) -> str:
    return f"{100 * v:+.2f}"


def _grows(values: list[float]) -> bool:
    """Whether a gain listed from the most groups to the fewest never falls."""
    return all(b >= a for a, b in zip(values, values[1:], strict=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="fn-pressure")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--metric", default="knn_acc", choices=sorted(ITEM_COLUMNS))
    ap.add_argument("--baseline", default="in-batch")
    args = ap.parse_args()
    runs, _ = latest_per_seed(load(args.tracking_uri, args.experiment).finished)
    col = ITEM_COLUMNS[args.metric]
    cells: dict[tuple[str, int], dict[str, dict[int, list[bool]]]] = {}
    fnr: dict[tuple[str, int, str], list[float]] = {}
    for _, r in runs.iterrows():
        m = POINT.match(r["suite"])
        if m is None or not isinstance(r[col], str):
            continue
        key = (m["suite"], int(m["k"]))
        cells.setdefault(key, {}).setdefault(r["variant"], {})[int(r["seed"])] = \
            [c == "1" for c in r[col]]
        fnr.setdefault((*key, r["variant"]), []).append(float(r.get("fnr", float("nan"))))
    if not cells:
        raise SystemExit(f"no finished run of {args.experiment!r} sweeps suite.classes")
    print(f"| suite | groups | strategy | seeds | {args.metric} (95% CI) | FNR | "
          f"gain over {args.baseline}, points (95% CI) | share of {args.baseline}'s errors "
          "removed (%) |")
    print("|---|---|---|---|---|---|---|---|")
    gains: dict[tuple[str, str], dict[int, tuple[float, float, float]]] = {}
    shares: dict[tuple[str, str], dict[int, float]] = {}
    for (suite, k) in sorted(cells, key=lambda sk: (sk[0], -sk[1])):
        by = cells[(suite, k)]
        base = by.get(args.baseline)
        # fewer groups make an easier task (at 2 groups accuracy nears its ceiling), so a gain
        # in points is also given as the share of the baseline's errors it removes
        base_err = 1 - item_interval(base).mean if base is not None else float("nan")
        for name in sorted(by, key=lambda n: (n != args.baseline, n)):
            iv = item_interval(by[name])
            f = fnr[(suite, k, name)]
            gain, share = ("baseline" if name == args.baseline else "–"), "–"
            if name != args.baseline and base is not None and not set(by[name]) & set(base):
                gain = f"no seed in common with {args.baseline} yet"  # a sweep still running
            elif name != args.baseline and base is not None:  # paired on the seeds both have
                p = paired_items(by[name], base)
                gains.setdefault((suite, name), {})[k] = (p.mean_diff, p.low, p.high)
                gain = f"{_pct(p.mean_diff)} ({_pct(p.low)} to {_pct(p.high)})"
                if base_err > 0:
                    shares.setdefault((suite, name), {})[k] = p.mean_diff / base_err
                    share = _pct(p.mean_diff / base_err)
            print(f"| {suite} | {k} | {name} | {iv.seeds} | {100 * iv.mean:.2f} "
                  f"({100 * iv.low:.2f}-{100 * iv.high:.2f}) | {sum(f) / len(f):.3f} | {gain} "
                  f"| {share} |")
    print()
    for (suite, name), by_k in sorted(gains.items()):
        ks = sorted(by_k, reverse=True)  # most groups first
        if len(ks) < 2:
            continue
        means = [by_k[k][0] for k in ks]
        grows = _grows(means)
        first, last = by_k[ks[0]], by_k[ks[-1]]
        apart = last[1] > first[2]  # the fewest-groups interval lies above the most-groups one
        overlap = "do not overlap" if apart else "overlap"
        print(f"{suite} {name}: gain {' -> '.join(_pct(v) for v in means)} points at "
              f"{' -> '.join(map(str, ks))} groups: "
              f"{'grows as groups fall' if grows else 'does not grow monotonically'}; "
              f"the intervals at the ends {overlap}")
        sh = shares.get((suite, name), {})
        if all(k in sh for k in ks):
            rel = [sh[k] for k in ks]
            rgrows = _grows(rel)
            print(f"    as a share of {args.baseline}'s errors: "
                  f"{' -> '.join(_pct(v) for v in rel)}%: "
                  f"{'grows as groups fall' if rgrows else 'does not grow monotonically'}")


if __name__ == "__main__":
    main()
