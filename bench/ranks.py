"""2 ranks with batch B/2 each against 1 rank with batch B: the figures behind
tests/test_distributed.py (which asserts them), printed.

    .venv/bin/python bench/ranks.py [--strategies in-batch memory-bank dynamic]

For each strategy, the test's trace (bbc-news, 4 steps of a global batch of 16, gloo on CPU
processes) runs once in this process and once as 2 spawned ranks; the script prints, over every
step and both ranks: the steps whose selections (each anchor's candidate ids) are identical, the
largest loss difference, the largest relative gradient difference and the largest parameter
difference after the last step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_distributed as T  # noqa: E402  (the test's trace, so both measure one thing)


def compare(strategy: str) -> str:
    one = T.trace(strategy)
    with tempfile.TemporaryDirectory() as d:
        two = T.two_ranks(strategy, str(Path(d) / "trace"))
    same = steps = 0
    dloss = dgrad = dparam = 0.0
    for r in two:
        for s1, s2 in zip(one["sig"], r["sig"], strict=True):
            steps += 1
            same += bool(torch.equal(s1, s2))
        dloss = max([dloss] + [abs(a - b) for a, b in zip(one["loss"], r["loss"], strict=True)])
        for g1, g2 in zip(one["grads"], r["grads"], strict=True):
            for a, b in zip(g1, g2, strict=True):
                dgrad = max(dgrad, float((b - a).norm() / a.norm().clamp_min(1e-30)))
        for p1, p2 in zip(one["params"], r["params"], strict=True):
            dparam = max(dparam, float((p2 - p1).abs().max()))
    return (f"| {strategy} | {same} of {steps} | {dloss:.2e} | {dgrad:.2e} | {dparam:.2e} | "
            f"{one['samples']} / {two[0]['samples']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=list(T.SETS), choices=list(T.SETS))
    args = ap.parse_args()
    print("| strategy | identical selections (steps x ranks) | max loss difference | "
          "max relative gradient difference | max parameter difference | samples (1 rank / "
          "2 ranks) |")
    print("|---|---|---|---|---|---|")
    for s in args.strategies:
        print(compare(s), flush=True)


if __name__ == "__main__":
    main()
