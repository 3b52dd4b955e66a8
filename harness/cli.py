"""The ``negbench`` command.

Bad input (an unknown suite, strategy or key, a value of the wrong type, a non-positive budget,
an unreadable data directory) ends with one line on stderr and exit status 2, never a traceback;
a run that fails (diverges, breaks the strategy contract) ends with one line and status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

from negbench.harness.ablate_cli import add_parser as add_ablate_parser
from negbench.harness.console import (
    EXIT_FAILED,
    EXIT_USAGE,
    Parser,
    UserError,
    add_tracking_uri,
    console,
    format_value,
    progress,
    run_command,
    strategy_table,
    subcommands,
)
from negbench.harness.submit import add_parser as add_submit_parser
from negbench.harness.tune import add_parser as add_tune_parser
from negbench.reports.cli import add_parser as add_report_parser

# this module's parser is built from modules that import neither torch nor mlflow, optuna or
# pandas at module level (tests/test_cli.py holds `negbench --help` to that); the commands import
# what they need when they run
__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "format_value", "main",
           "strategy_table"]


def _add_run_args(p: argparse.ArgumentParser, single: bool = True) -> None:
    if single:
        p.add_argument("--suite", required=True, help="suite name (see `negbench suites`)")
        p.add_argument("--strategy", required=True,
                       help="strategy name (see `negbench strategies`)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--budget", default=None, metavar="KIND=AMOUNT",
                   help="training budget: samples=N (default kind), steps=N, flops=X or "
                        "seconds=X; default: the suite's")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. optim.lr=0.01, objective.temperature=0.1, "
                        "strategy.K=512, suite.width=16, batch_size=128 (repeatable)")
    p.add_argument("--data-dir", default=None, help="where a suite looks for its data first")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    add_tracking_uri(p)
    p.add_argument("--experiment", default=None, help="mlflow experiment name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="negbench",
        description="Benchmark negative-sampling strategies for contrastive learning under "
                    "identical budgets: downstream accuracy, false-negative rate and compute "
                    "cost, tracked in mlflow.",
    )
    parser.add_argument("--plugin", dest="plugins", action="append", default=[],
                        metavar="MODULE_OR_FILE",
                        help="import a plugin (a .py file or a module) that registers strategies "
                             "or suites, before the command runs; may follow the subcommand too "
                             "(repeatable; README: Plugins)")
    sub = subcommands(parser)

    p = sub.add_parser("run", help="train and evaluate one strategy on one suite",
                       description="Train one strategy on one suite under a budget, evaluate "
                                   "the frozen encoder (kNN and linear probe) and record the "
                                   "run in mlflow.")
    _add_run_args(p)
    p.add_argument("--json", action="store_true",
                   help="print the final metrics as one JSON object on stdout")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="every strategy on digits, with a comparison table",
                       description="Run every registered strategy on a suite (digits by "
                                   "default) with the same budget and seed(s), record each run "
                                   "in mlflow, and print a comparison table.")
    p.add_argument("--suite", default="digits", help="suite name (default digits)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1)")
    p.add_argument("--strategies", default="all",
                   help="comma-separated strategy names (default: all registered)")
    _add_run_args(p, single=False)
    p.set_defaults(handler=cmd_demo)

    add_ablate_parser(sub)
    add_tune_parser(sub)
    add_submit_parser(sub)
    add_report_parser(sub)

    p = sub.add_parser("strategies", help="list the registered strategies",
                       description="List every registered strategy with its paper and knobs.")
    p.set_defaults(handler=cmd_strategies)
    p = sub.add_parser("check", help="run the registry's contract checks on one strategy or "
                                     "suite (a plugin's)",
                       description="Check one strategy or suite (yours, loaded with --plugin, "
                                   "or a registered one) against the contract every registered "
                                   "one meets, and print a pass/fail table. A strategy: declares "
                                   "a paper and a frozen Config with its space; well-formed "
                                   "negatives; never its anchor's own instance; no labels unless "
                                   "it is an oracle reference; no host sync in the step; same "
                                   "seed, same output; a real run on digits within its budget. "
                                   "A suite: data present, disjoint well-formed splits, random "
                                   "reproducible views, the encoder's interface, a short real "
                                   "run. Exit status 1 when a check fails.")
    p.add_argument("kind", choices=("strategy", "suite"), help="what to check")
    p.add_argument("name", help="its registered name")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a suite's settings, e.g. suite.root=PATH (repeatable)")
    p.add_argument("--data-dir", default=None, help="where a suite looks for its data first")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("suites", help="list the suites and whether their data is present",
                       description="List every suite: data source, size, encoder, default "
                                   "budget and whether its data is present.")
    p.add_argument("--data-dir", default=None, help="where suites look for their data first")
    p.set_defaults(handler=cmd_suites)
    return parser


# --------------------------------------------------------------------------- commands
def _config(args, suite: str, strategy: str, seed: int):
    from negbench.harness.config import build_config, parse_budget, parse_sets
    from negbench.harness.store import check_tracking_uri, resolve_uri

    check_tracking_uri(resolve_uri(args.tracking_uri))  # $MLFLOW_TRACKING_URI too, before work

    sets = parse_sets(args.sets)
    if args.device:
        sets["device"] = args.device
    budget = parse_budget(args.budget) if args.budget else None
    cfg = build_config(suite, strategy, seed=seed, budget=budget, sets=sets)
    from negbench import suites

    suites.create(cfg.suite, cfg.suite_cfg, data_dir=args.data_dir).locate()  # fail before work
    return cfg


def _run_one(cfg, args, experiment: str, prog, task=None):
    from negbench.harness.runner import run

    def on_log(point):
        if prog is not None and task is not None:
            stats = (f"loss {point['loss']:.3f}  fnr {point.get('fnr', math.nan):.3f}  "
                     f"{point['samples_per_second']:,.0f} samples/s")
            prog.update(task, completed=point["budget_fraction"] * 100, stats=stats)

    return run(cfg, tracking_uri=args.tracking_uri, experiment=experiment,
               data_dir=args.data_dir, on_log=on_log)


def cmd_run(args) -> int:
    from negbench.harness.store import shown_uri

    cfg = _config(args, args.suite, args.strategy, args.seed)
    con = console()
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone reports
    with progress(con, args.no_progress or not lead) as prog:
        task = prog.add_task(f"{cfg.suite}/{cfg.strategy} seed {cfg.seed}", total=100, stats="")
        result = _run_one(cfg, args, args.experiment or "negbench", prog, task)
    if not lead:
        return 0
    if args.json:
        print(json.dumps({"run_id": result.run_id, **result.metrics}, sort_keys=True))
    else:
        from rich.table import Table

        t = Table(title=f"{cfg.suite} / {cfg.strategy} / seed {cfg.seed}")
        t.add_column("metric")
        t.add_column("value", justify="right")
        from negbench.harness.runner import LABEL_METRICS, NO_LABELS

        suite_own = sorted(k for k in result.metrics if k.startswith("retrieval_"))
        for k in ("knn_acc", "linear_acc", *suite_own, "fnr", "fnr_weighted", "hardness",
                  "collisions_per_anchor", "samples_seen", "steps", "flops", "wall_seconds",
                  "samples_per_second", "peak_mem_mb"):
            na = not result.labelled and k in LABEL_METRICS
            t.add_row(k, NO_LABELS if na else format_value(result.metrics.get(k)))
        con.print(t)
        con.print(f"mlflow run {result.run_id} in {shown_uri(args.tracking_uri)}")
    return 0


def cmd_demo(args) -> int:
    from negbench import strategies
    from negbench.harness.runner import RunFailed
    from negbench.harness.store import shown_uri

    names = strategies.names() if args.strategies == "all" else [
        s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    cfgs = [_config(args, args.suite, n, seed) for n in names for seed in range(args.seeds)]
    con = console()
    experiment = args.experiment or "negbench-demo"
    results, failures = {}, {}
    with progress(con, args.no_progress) as prog:
        overall = prog.add_task(f"demo: {len(cfgs)} runs", total=len(cfgs), stats="")
        for cfg in cfgs:
            task = prog.add_task(f"{cfg.suite}/{cfg.strategy} seed {cfg.seed}", total=100,
                                 stats="")
            try:
                r = _run_one(cfg, args, experiment, prog, task)
                results.setdefault(cfg.strategy, []).append(r.metrics)
            except RunFailed as e:
                failures[f"{cfg.strategy} seed {cfg.seed}"] = str(e)
            prog.remove_task(task)
            prog.advance(overall)
    cols = [("knn_acc", "kNN acc"), ("linear_acc", "linear acc"), ("fnr", "FNR"),
            ("hardness", "hardness"), ("wall_seconds", "wall s"),
            ("samples_per_second", "samples/s"), ("flops", "FLOPs")]
    t = strategy_table(f"{args.suite}: every strategy under one budget "
                       f"({cfgs[0].budget.kind}={cfgs[0].budget.amount:g}, "
                       f"{args.seeds} seed{'s' if args.seeds > 1 else ''})", results, cols,
                       spread=("knn_acc", "linear_acc", "fnr"))
    con.print(t)
    for k, why in failures.items():
        con.print(f"[red]failed[/red] {k}: {why}")
    con.print(f"runs recorded in mlflow experiment {experiment!r} at "
              f"{shown_uri(args.tracking_uri)}")
    return EXIT_FAILED if failures else 0


def cmd_strategies(args) -> int:
    import dataclasses

    from rich.table import Table

    from negbench import strategies

    t = Table(title="negative-sampling strategies")
    for c in ("name", "paper", "knobs (defaults)", "origin"):
        t.add_column(c)
    for n in strategies.names():
        cls = strategies.get(n)
        knobs = ", ".join(f"{f.name}={getattr(cls.Config(), f.name)!r}"
                          for f in dataclasses.fields(cls.Config))
        t.add_row(f"{n} (oracle)" if cls.oracle else n, cls.paper, knobs or "-",
                  strategies.REGISTRY.origin(n))
    out = console(stderr=False)
    out.print(t)
    out.print("(oracle): a reference that reads the labels; reports show it as a bound, never "
              "ranked. Suites may declare their own defaults for a strategy's knobs: "
              "`negbench suites` lists them.", highlight=False)
    return 0


def cmd_check(args) -> int:
    from rich.table import Table

    from negbench.harness.check import check_strategy, check_suite
    from negbench.harness.config import parse_sets

    if args.kind == "strategy":
        if args.sets:
            raise UserError("check strategy takes no --set: it checks the strategy's defaults")
        results = check_strategy(args.name)
    else:
        results = check_suite(args.name, parse_sets(args.sets), data_dir=args.data_dir)
    t = Table(title=f"negbench check {args.kind} {args.name}")
    for c in ("check", "result", "detail"):
        t.add_column(c)
    for r in results:
        shown = {True: "pass", False: "[red]FAIL[/red]", None: "skip"}[r.ok]
        t.add_row(r.check, shown, r.detail)
    out = console(stderr=False)
    out.print(t)
    failed = [r for r in results if r.ok is False]
    if failed:
        skipped = sum(r.ok is None for r in results)
        console().print(f"{args.kind} {args.name}: FAILS {len(failed)} of {len(results)} checks"
                        + (f" ({skipped} not judged)" if skipped else "") + ": "
                        + "; ".join(f"{r.check}: {r.detail}" for r in failed),
                        soft_wrap=True, highlight=False)
        return EXIT_FAILED
    out.print(f"{args.kind} {args.name}: passes all {len(results)} checks", highlight=False)
    return 0


def cmd_suites(args) -> int:
    from rich.table import Table

    from negbench import suites

    t = Table(title="benchmark suites")
    for c in ("name", "modality", "data source", "size (train/val/test)", "encoder",
              "default budget", "data", "origin"):
        t.add_column(c)
    missing = []
    for n in suites.names():
        s = suites.create(n, data_dir=args.data_dir)
        status = s.data_status()
        size = "-"
        if status == "present":
            d = s.load()
            size = f"{len(d.train):,}/{len(d.val):,}/{len(d.test):,}"
        else:
            missing.append(status)
        kind, amount = s.default_budget
        t.add_row(n, s.modality, s.source, size, s.describe_encoder(), f"{kind}={amount:,.0f}",
                  "present" if status == "present" else "missing (see below)",
                  suites.REGISTRY.origin(n))
    out = console(stderr=False)
    out.print(t)
    for line in missing:  # the how-to lines, whole, under the table
        out.print(f"- {line}", soft_wrap=True, highlight=False)
    for n in suites.names():  # where the papers' defaults do not transfer to a suite
        for strategy, knobs in suites.get(n).strategy_overrides.items():
            shown = ", ".join(f"{k}={v!r}" for k, v in knobs.items())
            out.print(f"{n} declares for {strategy}: {shown} (see docs/decisions.md)",
                      highlight=False)
    for n in suites.names():  # the false-negative pressure knob
        groupings = suites.get(n).groupings
        if groupings:
            ks = ", ".join(map(str, sorted(groupings, reverse=True)))
            out.print(f"{n}: --set suite.classes={{{ks}}} groups its classes (README: "
                      "False-negative pressure)", highlight=False)
    return 0


def hoist_plugins(argv: list[str]) -> list[str]:
    """``argv`` with every ``--plugin X`` (or ``--plugin=X``) moved before the subcommand, where
    the top-level parser takes it, so that it may be written anywhere on the line."""
    plugins, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a == "--plugin" and i + 1 < len(argv):
            plugins += [a, argv[i + 1]]
            i += 2
            continue
        if a.startswith("--plugin="):
            plugins.append(a)
        else:
            rest.append(a)
        i += 1
    return plugins + rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(hoist_plugins(argv))
    return run_command(args, ["negbench", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
