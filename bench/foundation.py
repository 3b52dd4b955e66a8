"""Issue 2's figures: `random` and `in-batch` at each suite's default budget, with the untrained
encoder and raw pixels as floors (kNN top-1, k=20, cosine, temperature-weighted votes).

    .venv/bin/python bench/foundation.py [--suites digits fashion-mnist] [--seed 0]

Runs are recorded in mlflow (experiment ``bench-foundation``) like any other run.
"""

from __future__ import annotations

import argparse
import time

import torch

from negbench import suites
from negbench.harness.config import build_config
from negbench.harness.evaluate import embed, knn_top1, linear_probe
from negbench.harness.runner import resolve_device, run


def floors(suite_name: str, seed: int) -> dict[str, float]:
    cfg = build_config(suite_name, "in-batch", seed=seed)
    suite = suites.create(suite_name, cfg.suite_cfg)
    data = suite.load()
    dev = resolve_device("auto")
    torch.manual_seed(seed)
    enc = suite.build_encoder().to(dev)
    tr, te = data.train.to(dev), data.test.to(dev)
    f_tr, f_te = embed(enc, suite, tr.x), embed(enc, suite, te.x)
    px_tr = suite.prepare(tr.x).flatten(1)
    px_te = suite.prepare(te.x).flatten(1)
    e = cfg.eval
    return {
        "untrained_knn": knn_top1(f_tr, tr.y, f_te, te.y, data.n_classes, e.knn_k,
                                  e.knn_temperature),
        "untrained_linear": linear_probe(f_tr, tr.y, f_te, te.y, data.n_classes,
                                         e.linear_epochs, e.linear_lr, seed),
        "pixels_knn": knn_top1(px_tr, tr.y, px_te, te.y, data.n_classes, e.knn_k,
                               e.knn_temperature),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["digits", "fashion-mnist"])
    ap.add_argument("--strategies", nargs="+", default=["random", "in-batch"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for s in args.suites:
        fl = floors(s, args.seed)
        print(f"{s}: untrained encoder kNN {fl['untrained_knn']:.4f} "
              f"(linear {fl['untrained_linear']:.4f}), raw pixels kNN {fl['pixels_knn']:.4f}",
              flush=True)
        for name in args.strategies:
            cfg = build_config(s, name, seed=args.seed)
            t = time.perf_counter()
            r = run(cfg, experiment="bench-foundation")
            m = r.metrics
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
