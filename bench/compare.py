"""Equal-budget comparison table (issue 3's figures) from tracked runs.

Run the runs first, e.g. every strategy, 3 seeds, one budget:

    .venv/bin/negbench demo --suite digits --seeds 3 --experiment compare
    .venv/bin/negbench demo --suite fashion-mnist --seeds 3 --budget samples=20000 \
        --experiment compare

then print one markdown table per suite, read back from mlflow:

    .venv/bin/python bench/compare.py --experiment compare
"""

from __future__ import annotations

import argparse

import mlflow

from negbench.harness.cli import format_value
from negbench.harness.tracking import resolve_uri

COLUMNS = [  # (metric, header, spread?)
    ("knn_acc", "kNN acc", True),
    ("linear_acc", "linear acc", True),
    ("fnr", "FNR", True),
    ("hardness", "hardness", False),
    ("wall_seconds", "train s", False),
    ("flops", "FLOPs", False),
    ("cost_trained_samples", "trained samples", False),
    ("cost_nograd_encodes", "no-grad encodes", False),
    ("cost_mining_macs", "mining MACs", False),
    ("cost_state_bytes", "state bytes", False),
    ("cost_adversary_updates", "adversary updates", False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="negbench-demo")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    mlflow.set_tracking_uri(resolve_uri(args.tracking_uri))
    df = mlflow.search_runs(experiment_names=[args.experiment],
                            filter_string="attributes.status = 'FINISHED'")
    if df.empty:
        raise SystemExit(f"no finished runs in experiment {args.experiment!r}")
    for suite, sdf in df.groupby("tags.suite"):
        budgets = sorted(set(sdf["tags.budget"]))
        print(f"\n### {suite} (budget {', '.join(budgets)}; seeds per strategy: "
              f"{', '.join(str(n) for n in sorted(set(sdf.groupby('tags.strategy').size())))})\n")
        print("| strategy | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        rows = []
        for strat, g in sdf.groupby("tags.strategy"):
            cells = []
            for key, _, spread in COLUMNS:
                col = g[f"metrics.{key}"].astype(float)
                cell = format_value(col.mean())
                if spread and len(col) > 1:
                    cell += f" ± {col.std(ddof=1):.4f}"
                cells.append(cell)
            rows.append((-g["metrics.knn_acc"].mean(), strat, cells))
        for _, strat, cells in sorted(rows):
            print(f"| {strat} | " + " | ".join(cells) + " |")
    print("\n(mean ± sample standard deviation over seeds; cost columns are means per run)")


if __name__ == "__main__":
    main()
