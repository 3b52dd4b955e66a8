"""The harness's overhead: the same training through a bare PyTorch loop and through
``negbench run``, in samples per second.

    .venv/bin/python bench/overhead.py [--suite digits] [--samples 60000] [--repeats 9]

The bare loop, written here with no harness code, trains the suite's encoder on the suite's two
views with SimCLR's in-batch NT-Xent (the other 2B - 2 views as negatives), AdamW, the same
batch size, temperature, warm-up and cosine schedule. ``negbench run`` trains ``in-batch`` with
everything it adds: the strategy contract and its checks, the FNR/hardness and cost meters, the
phase clock, the budget, mlflow tracking and the progress bar. Both count training time only
(evaluation excluded: the harness's ``wall_seconds``). Target: the harness within 5% of the bare
loop (ratio >= 0.95).

Each measurement runs in a fresh process (the bare loop through ``--bare``), so both pay the
same first-run costs (thread pools, allocator, caches). They run in pairs, the order swapped
from one pair to the next, and the script prints every figure, each pair's ratio, the medians
and two ratios: the median of the pairs' ratios (the headline: a pair shares the machine's
state of the moment, so a neighbour's load on this shared VM cancels) and the ratio of the
medians. ``--in-process`` measures both warm instead: one process runs each once untimed, then
the pairs, calling :func:`negbench.harness.runner.run` (what ``negbench run`` calls, tracking
included)
for the harness.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from negbench import suites
from negbench.harness.config import build_config


def bare_loop(suite_name: str, samples: int, seed: int, device: str) -> float:
    """Samples per second of a plain PyTorch SimCLR loop over the suite's data and encoder."""
    cfg = build_config(suite_name, "in-batch", seed=seed)  # only to read the same numbers
    b, tau, o = cfg.batch_size, cfg.objective.temperature, cfg.optim
    dev = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    suite = suites.create(suite_name, cfg.suite_cfg)
    x_train = suite.load().train.x.to(dev)
    n = x_train.shape[0]
    enc = suite.build_encoder().to(dev)
    opt = torch.optim.AdamW(enc.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    steps = math.ceil(samples / b)
    perm, pos = torch.randperm(n, generator=gen, device=dev), 0
    eye = None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for step in range(steps):
        bs = min(b, samples - step * b)
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen, device=dev), 0
        ids = perm[pos:pos + bs]
        pos += bs
        v1, v2 = suite.views(x_train[ids], gen)
        z = enc(torch.cat([v1, v2]))  # (2B, D), unit rows
        f = (step + 1) * bs / samples
        lr = (o.lr * f / o.warmup if f < o.warmup else
              o.lr * 0.5 * (1 + math.cos(math.pi * (f - o.warmup) / (1 - o.warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        logits = z @ z.T / tau  # (2B, 2B)
        if eye is None or eye.shape[0] != logits.shape[0]:
            eye = torch.eye(logits.shape[0], dtype=torch.bool, device=dev)
        logits = logits.masked_fill(eye, float("-inf"))
        target = torch.cat([torch.arange(bs, 2 * bs), torch.arange(bs)]).to(dev)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return samples / (time.perf_counter() - t0)


def harness_run(suite_name: str, samples: int, seed: int, device: str, root: str) -> float:
    """Samples per second of ``negbench run`` (training wall-clock), tracked in mlflow."""
    cmd = [sys.executable, "-m", "negbench.harness.cli", "run", "--suite", suite_name, "--strategy",
           "in-batch", "--seed", str(seed), "--budget", f"samples={samples}", "--device",
           device, "--tracking-uri", f"sqlite:///{root}/mlflow.db", "--json",
           "--set", "eval.linear_epochs=1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["samples_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--samples", type=int, default=60000,
                    help="samples per run (default 60000: digits' default budget)")
    ap.add_argument("--repeats", type=int, default=9, help="pairs of runs (default 9)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--in-process", action="store_true",
                    help="both warm, alternating in this process (see the module docstring)")
    ap.add_argument("--bare", action="store_true",
                    help="run the bare loop once in this process and print its samples/s")
    args = ap.parse_args()
    if args.bare:
        print(bare_loop(args.suite, args.samples, args.seed, args.device))
        return
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    threads = int(os.environ.get("NEGBENCH_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
            else f"CPU, {threads} threads")
    what = "harness (in process)" if args.in_process else "negbench run"
    print(f"{args.suite}, in-batch, {args.samples} samples per run, device {name}, "
          f"{'warm, in one process' if args.in_process else 'fresh processes'}", flush=True)
    bare, harness = [], []
    with tempfile.TemporaryDirectory(prefix="negbench-overhead-") as root:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if args.in_process:
            from negbench.harness.config import parse_budget
            from negbench.harness.runner import run

            cfg = build_config(args.suite, "in-batch", seed=args.seed,
                               budget=parse_budget(f"samples={args.samples}"),
                               sets={"device": args.device, "eval.linear_epochs": "1"})

            def measure_harness() -> float:
                r = run(cfg, tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="overhead")
                return r.metrics["samples_per_second"]

            def measure_bare() -> float:
                return bare_loop(args.suite, args.samples, args.seed, args.device)

            measure_bare()  # warm-ups, untimed
            measure_harness()
        else:
            def measure_harness() -> float:
                return harness_run(args.suite, args.samples, args.seed, args.device, root)

            def measure_bare() -> float:
                out = subprocess.run(
                    [sys.executable, __file__, "--bare", "--suite", args.suite, "--samples",
                     str(args.samples), "--seed", str(args.seed), "--device", args.device],
                    check=True, capture_output=True, text=True).stdout
                return float(out.split()[-1])

        for i in range(args.repeats):
            if i % 2 == 0:
                bare.append(measure_bare())
                harness.append(measure_harness())
            else:
                harness.append(measure_harness())
                bare.append(measure_bare())
            print(f"pair {i}: bare {bare[-1]:,.0f} samples/s, {what} {harness[-1]:,.0f} "
                  f"samples/s, ratio {harness[-1] / bare[-1]:.3f}", flush=True)
    mb, mh = statistics.median(bare), statistics.median(harness)
    paired = statistics.median(h / b for h, b in zip(harness, bare, strict=True))
    print(f"median: bare {mb:,.0f} samples/s, {what} {mh:,.0f} samples/s; ratio of the "
          f"medians {mh / mb:.3f}; median of the pairs' ratios {paired:.3f} "
          f"({'within' if paired >= 0.95 else 'NOT within'} 5%)")


if __name__ == "__main__":
    main()
