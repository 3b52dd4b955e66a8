"""Issue 16's table: every strategy on every offline suite at its default budget (or --budget),
with accuracy, representation health and the run's verdict (ok, degraded, collapsed).

    .venv/bin/python bench/health_table.py [--suites digits bbc-news fashion-mnist]
        [--strategies all] [--seed 0] [--budget samples=20000] [--set strategy.m=0.9]
        [--experiment bench-health] [--tracking-uri URI]

Runs are recorded in mlflow like any other run (floors are measured once per suite and seed
and reused), and a Markdown table is printed at the end, one row per (suite, strategy), the
floors of each suite first. Each run carries its cell key (``negbench.cell``, the hash of its
resolved config): rerun after an interruption, the script reads the runs already FINISHED in
the experiment instead of training them again.
"""

from __future__ import annotations

import argparse
import math
import time

from negbench import strategies
from negbench.harness.config import build_config, parse_budget, parse_sets
from negbench.harness.runner import run
from negbench.harness.spec import cell_key
from negbench.harness.store import completed
from negbench.harness.tags import CELL_TAG, HEALTH_REASON_TAG, HEALTH_TAG

COLUMNS = ("knn_acc", "linear_acc", "retrieval_r1", "align", "uniform", "rankme", "hardness",
           "fnr")


def _f(v, d=4) -> str:
    return "–" if v is None or not math.isfinite(float(v)) else f"{float(v):.{d}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["digits", "bbc-news", "fashion-mnist"])
    ap.add_argument("--strategies", nargs="+", default=["all"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default=None, help="KIND=AMOUNT for every suite (default: each "
                                                   "suite's own, with its declared defaults)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--experiment", default="bench-health")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    names = strategies.names() if args.strategies == ["all"] else args.strategies
    budget = parse_budget(args.budget) if args.budget else None
    sets = parse_sets(args.sets)
    rows = []
    done = completed(args.tracking_uri, args.experiment)
    for suite in args.suites:
        for name in names:
            cfg = build_config(suite, name, seed=args.seed, budget=budget, sets=sets)
            key = cell_key(cfg)
            t = time.perf_counter()
            if key in done:  # finished before an interruption: read, not trained again
                old = done[key]
                m = dict(old.data.metrics)
                verdict = old.data.tags.get(HEALTH_TAG, "")
                reason = old.data.tags.get(HEALTH_REASON_TAG, "")
            else:
                r = run(cfg, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        extra_tags={CELL_TAG: key})
                m, verdict, reason = r.metrics, r.health, r.health_reason
            rows.append((suite, name, cfg, m, verdict, reason))
            print(f"{suite:13s} {name:12s} {cfg.budget.kind}={cfg.budget.amount:g} "
                  f"kNN {_f(m['knn_acc'])} (floor {_f(m.get('floor_knn_acc'))}) "
                  f"uniform {_f(m.get('uniform'), 3)} RankMe {_f(m.get('rankme'), 1)} "
                  f"-> {verdict} ({time.perf_counter() - t:.0f} s"
                  f"{', recorded before' if key in done else ''})", flush=True)
    print(f"\nverdict tags: {HEALTH_TAG}, reason in {HEALTH_REASON_TAG}\n")
    print("| suite | strategy | budget | " + " | ".join(COLUMNS) + " | verdict | reason |")
    print("|" + "---|" * (len(COLUMNS) + 5))
    shown = set()
    for suite, name, cfg, m, verdict, reason in rows:
        if suite not in shown:
            shown.add(suite)
            fl = [m.get("floor_" + c) for c in COLUMNS]
            raw = m.get("raw_knn_acc")
            print(f"| {suite} | (untrained encoder) | – | "
                  + " | ".join(_f(v) if v is not None else "–" for v in fl)
                  + f" | floor | raw-input kNN {_f(raw)} |")
        b = cfg.budget
        print(f"| {suite} | {name} | {b.kind}={b.amount:g} | "
              + " | ".join(_f(m.get(c)) for c in COLUMNS)
              + f" | {verdict} | {reason if verdict != 'ok' else ''} |")


if __name__ == "__main__":
    main()
