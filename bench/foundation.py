"""Issue 2's figures: `random` and `in-batch` at each suite's default budget, with the untrained
encoder and raw pixels as floors (kNN top-1, k=20, cosine, temperature-weighted votes).

    .venv/bin/python bench/foundation.py [--suites digits fashion-mnist] [--seed 0]

Runs are recorded in mlflow (experiment ``bench-foundation``) like any other run.
"""

from __future__ import annotations

import argparse
import time

from negbench.harness.config import build_config
from negbench.harness.runner import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--strategies", nargs="+", default=["random", "in-batch"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for s in args.suites:
        for i, name in enumerate(args.strategies):
            cfg = build_config(s, name, seed=args.seed)
            t = time.perf_counter()
            r = run(cfg, experiment="bench-foundation")
            m = r.metrics
            if i == 0:  # every run records its floors (harness.runner.Trainer.floor)
                print(f"{s}: untrained encoder kNN {m['floor_knn_acc']:.4f} (linear "
                      f"{m['floor_linear_acc']:.4f}), raw pixels kNN {m['raw_knn_acc']:.4f}",
                      flush=True)
            rows.append((s, name, cfg.budget, m, time.perf_counter() - t))
            print(f"{s:14s} {name:9s} budget {cfg.budget.kind}={cfg.budget.amount:g}  "
                  f"kNN {m['knn_acc']:.4f}  linear {m['linear_acc']:.4f}  FNR {m['fnr']:.4f}  "
                  f"train {m['wall_seconds']:.1f} s  {m['samples_per_second']:,.0f} samples/s",
                  flush=True)
    print("\n| suite | strategy | budget | kNN acc | linear acc | FNR | train wall s | samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for s, name, b, m, _ in rows:
        print(f"| {s} | {name} | {b.kind}={b.amount:g} | {m['knn_acc']:.4f} | "
              f"{m['linear_acc']:.4f} | {m['fnr']:.4f} | {m['wall_seconds']:.1f} | "
              f"{m['samples_per_second']:,.0f} |")


if __name__ == "__main__":
    main()
