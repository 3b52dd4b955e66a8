"""``negbench ablate`` and ``negbench worker``: an ablation spec's cells run from a work queue,
by local processes (ablate) or by processes anywhere that share the queue (worker), each ending
with the same tables and budget audit. Their own module so that ``negbench submit`` can run a
worker in a job's process (:func:`~negbench.harness.console.main_of`) without importing the
whole command line.
"""

from __future__ import annotations

import argparse

from negbench.harness.console import (
    EXIT_FAILED,
    UserError,
    add_tracking_uri,
    console,
    progress,
    strategy_table,
)
from negbench.harness.store import env_storage


def add_parser(sub) -> None:
    """Add ``ablate`` and ``worker`` to argparse subparsers ``sub``."""
    p = sub.add_parser("ablate", help="run an ablation spec (suites x strategies x seeds)",
                       description="Run every cell of an ablation spec (a TOML file: suites x "
                                   "strategies x seeds under one budget; see the README) exactly "
                                   "once. Cells come from a work queue (the one of `negbench "
                                   "worker`) beside the tracking store, so ablations of one spec "
                                   "started together share the cells; cells already completed "
                                   "in the tracking store are skipped, so a killed ablation "
                                   "resumes when run again; a failing cell is recorded with its "
                                   "reason and the others go on. Ends with a comparison table "
                                   "per suite and an audit of every run's spent budget.")
    p.add_argument("spec", help="the spec file (e.g. specs/demo.toml)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes, each with its share of the CPU threads or one "
                        "GPU each (default 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="show the grid and what is already done, run nothing")
    p.add_argument("--data-dir", default=None, help="where suites look for their data first")
    add_tracking_uri(p)
    p.add_argument("--report", action="store_true",
                   help="end by writing the experiment's comparison report (as `negbench "
                        "report --experiment NAME`) and printing its path")
    p.add_argument("--no-progress", action="store_true", help="no live view")
    p.add_argument("--queue", default=None, metavar="URL",
                   help="the work queue, an optuna storage URL (default: $NEGBENCH_STORAGE, "
                        "else queue.db beside a sqlite tracking store, else a file per user "
                        "and tracking URI in the temporary directory)")
    # a local worker of another `ablate --workers N`: cells from --queue, events as JSON lines
    p.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_ablate)

    p = sub.add_parser("worker", help="join an ablation's shared work queue (any machine)",
                       description="Take cells of an ablation spec from a work queue that many "
                                   "processes on many machines share: an optuna study in RDB "
                                   "storage (PostgreSQL for a team), with a grid sampler over "
                                   "the spec's cells. Each cell runs once; a worker that dies "
                                   "has its cell retried by another after a grace period; cells "
                                   "already completed in the tracking store are skipped. Point "
                                   "every worker at one mlflow tracking server. Ends, when no "
                                   "cell is left, with the same tables and audit as ablate.")
    p.add_argument("spec", help="the spec file (e.g. specs/standard.toml)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the queue's optuna storage (default: $NEGBENCH_STORAGE), e.g. "
                        "postgresql+psycopg2://user@host/negbench (or a sqlite:/// file for "
                        "processes on one machine); keep a password out of the command line: "
                        "$NEGBENCH_STORAGE, or PostgreSQL's ~/.pgpass")
    add_tracking_uri(p, example="http://host:5000")
    p.add_argument("--data-dir", default=None, help="where suites look for their data first")
    p.add_argument("--heartbeat", type=int, default=20, metavar="S",
                   help="seconds between a running cell's heartbeats (default 20)")
    p.add_argument("--grace", type=int, default=60, metavar="S",
                   help="seconds without a heartbeat after which a cell is retried (default 60)")
    p.add_argument("--max-cells", type=int, default=None, metavar="N",
                   help="leave after running N cells (default: when the grid is done)")
    p.add_argument("--report", action="store_true",
                   help="end by writing the experiment's comparison report and printing its "
                        "path")
    p.add_argument("--no-progress", action="store_true", help="no live view")
    p.set_defaults(handler=cmd_worker)



def _show_cell(prog, row, who: str, kind: str, label: str, info: dict,
               failures: dict[str, str]) -> bool:
    """A cell's event on a worker's progress row (``who``: how the row names the worker);
    True when the cell ended (done or failed), whose failure goes into ``failures``."""
    if kind == "start":
        prog.update(row, description=f"{who}: {label}", completed=0, stats="")
    elif kind == "progress":
        prog.update(row, completed=100 * info["fraction"], stats=f"loss {info['loss']:.3f}")
    elif kind in ("done", "failed"):
        prog.update(row, completed=100,
                    stats="done" if kind == "done" else "[red]failed[/red]")
        if kind == "failed":
            failures[label] = info["reason"]
        return True
    return False


def cmd_ablate(args) -> int:
    from rich.table import Table

    from negbench.harness import ablate as A
    from negbench.harness.spec import load_spec
    from negbench.harness.store import shown_uri

    spec = load_spec(args.spec)
    cells = spec.cells()
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    if args.events:  # a local worker of another ablate: cells from its queue, JSON events
        queue = env_storage(args.queue)
        if queue is None:
            raise UserError("--events needs --queue URL or $NEGBENCH_STORAGE")
        A.run_child(spec, cells, queue, tracking_uri=args.tracking_uri,
                    data_dir=args.data_dir)
        return 0
    done = A.completed(args.tracking_uri, spec.name)
    if args.dry_run:
        t = Table(title=f"{spec.name}: {len(cells)} cells ({len(spec.suites)} suites x "
                        f"{len(spec.strategies)} strategies x "
                        + (f"{len(spec.fn_filters)} filters x " if len(spec.fn_filters) > 1
                           else "")
                        + (f"{len(spec.points())} sweep points x " if spec.sweep else "")
                        + f"{len(spec.seeds)} seeds)")
        for c in ("suite", "strategy", "seed", "budget", "cell", "status"):
            t.add_column(c)
        for c in cells:
            b = c.config.budget
            t.add_row(c.section, c.variant, str(c.config.seed),
                      f"{b.kind}={b.amount:g}", c.key, "done" if c.key in done else "to run")
        out = console(stderr=False)
        out.print(t)
        left = sum(c.key not in done for c in cells)
        out.print(f"{len(cells) - left} done, {left} to run; runs go to experiment "
                  f"{spec.name!r} at {shown_uri(args.tracking_uri)}")
        return 0
    con = console()
    failures: dict[str, str] = {}
    todo = sum(c.key not in done for c in cells)
    with progress(con, args.no_progress) as prog:
        overall = prog.add_task(f"{spec.name}: {todo} of {len(cells)} cells to run",
                                total=len(cells), completed=len(cells) - todo, stats="")
        rows = {w: prog.add_task(f"worker {w}: idle", total=100, stats="")
                for w in range(args.workers)}
        shown = [len(cells) - todo]  # cells done or failed, here or by other processes

        def on_start(o) -> None:
            if o.orphans:
                con.print(f"marked {o.orphans} run(s) left RUNNING by a killed ablation as "
                          "KILLED")
            for n, what in ((o.failed_again, "failed"),
                            (o.missing_again, "done in the queue but not in the tracking store")):
                if n:
                    con.print(f"{n} cell(s) {what} queued again", highlight=False)

        def on_event(w: int, ev: dict) -> None:
            if ev["event"] == "queue":
                shown[0] = max(shown[0], ev["finished"])
            elif ev.get("cell") is not None and _show_cell(
                    prog, rows[w], f"worker {w}", ev["event"], ev["cell"], ev, failures):
                shown[0] += 1
            prog.update(overall, completed=min(shown[0], len(cells)))

        result = A.run_ablation(spec, cells, args.spec, workers=args.workers,
                                tracking_uri=args.tracking_uri, data_dir=args.data_dir,
                                queue=env_storage(args.queue), on_start=on_start,
                                on_event=on_event)
        for w, code in enumerate(result.worker_codes):
            if code != 0:
                failures[f"worker {w}"] = f"exited with status {code}"
    return _ablation_summary(spec, cells, args.tracking_uri, failures, args)


def cmd_worker(args) -> int:
    from negbench.harness import worker as W
    from negbench.harness.pool import apply_thread_share
    from negbench.harness.spec import load_spec
    from negbench.harness.store import completed

    spec = load_spec(args.spec)
    cells = spec.cells()
    apply_thread_share()
    if args.max_cells is not None and args.max_cells < 1:
        raise UserError("--max-cells must be >= 1")
    storage = env_storage(args.storage)
    if storage is None:
        raise UserError("the queue's storage is missing: pass --storage URL or set "
                        "$NEGBENCH_STORAGE")
    queue = W.open_queue(spec, cells, storage, args.tracking_uri,
                         heartbeat=args.heartbeat, grace=args.grace)
    con = console()
    again, lost = W.requeue(queue, set(completed(args.tracking_uri, spec.name)))
    con.print(f"worker {W.worker_id()} joined {queue.study.study_name} ({len(cells)} cells)"
              + (f"; {again} failed cell(s) queued again" if again else "")
              + (f"; {lost} cell(s) missing from the tracking store queued again"
                 if lost else ""), highlight=False)
    failures: dict[str, str] = {}
    with progress(con, args.no_progress) as prog:
        grid = prog.add_task(f"{spec.name}: grid", total=len(cells), stats="")
        mine = prog.add_task("this worker: idle", total=100, stats="")

        def on_event(kind, cell, info):
            if kind == "queue":
                prog.update(grid, completed=info["finished"],
                            stats=f"{info['running']} running, {info['todo']} to start")
            elif cell is not None:
                _show_cell(prog, mine, "this worker", kind, cell.label, info, failures)

        ran = W.work(spec, cells, queue, tracking_uri=args.tracking_uri, data_dir=args.data_dir,
                     max_cells=args.max_cells, on_event=on_event)
    con.print(f"worker {W.worker_id()} ran {ran} cell(s)", highlight=False)
    if args.max_cells is not None and ran >= args.max_cells:
        return EXIT_FAILED if failures else 0
    return _ablation_summary(spec, cells, args.tracking_uri, failures, args)


def _ablation_summary(spec, cells, tracking_uri, failures: dict[str, str], args) -> int:
    """The end of ``ablate`` and ``worker``: a table per suite, failures, the budget audit, and
    with ``--report`` the comparison report (written even when some cells failed)."""
    from negbench.harness import ablate as A
    from negbench.harness.store import shown_uri

    done = A.completed(tracking_uri, spec.name)
    out = console(stderr=False)
    cols = [("knn_acc", "kNN acc"), ("linear_acc", "linear acc"), ("retrieval_r1", "R@1"),
            ("retrieval_mrr", "MRR"), ("fnr", "FNR"), ("hardness", "hardness"),
            ("wall_seconds", "wall s")]
    # a table per suite and sweep point, a row per strategy and filter: only seeds are averaged
    tables: dict[str, dict[str, list[dict]]] = {}
    for c in cells:
        if c.key in done:
            tables.setdefault(c.section, {}).setdefault(c.variant, []).append(
                done[c.key].data.metrics)
    for suite, per in tables.items():
        shown = [(k, t) for k, t in cols if any(k in m for ms in per.values() for m in ms)]
        t = strategy_table(f"{spec.name} / {suite}: {len(spec.seeds)} seed(s), mean ± std", per,
                           shown)
        out.print(t)
        if not any("knn_acc" in m for ms in per.values() for m in ms):
            from negbench.harness.runner import NO_LABELS

            out.print(f"{suite}: kNN acc, linear acc and FNR: {NO_LABELS} (ranked by MRR)",
                      highlight=False)
    missing = [c.label for c in cells if c.key not in done]
    for label, why in failures.items():
        out.print(f"[red]failed[/red] {label}: {why}", highlight=False)
    issues = A.audit(spec, tracking_uri)
    if issues:
        out.print("[red]budget audit: runs whose spend differs[/red]")
        for line in issues:
            out.print(f"  {line}", highlight=False)
    else:
        out.print(f"budget audit: all {len(cells) - len(missing)} completed runs spent exactly "
                  "their cell's budget, the same within each suite")
    out.print(f"{len(cells) - len(missing)} of {len(cells)} cells completed; runs in experiment "
              f"{spec.name!r} at {shown_uri(tracking_uri)}")
    if args.report and len(missing) < len(cells):
        from negbench.reports.cli import generate

        with progress(console(), args.no_progress) as prog:
            index = generate(tracking_uri, spec.name, progress=prog)
        out.print(f"report: {index.resolve()}", highlight=False, soft_wrap=True)
    return EXIT_FAILED if missing else 0


__all__ = ["add_parser", "cmd_ablate", "cmd_worker"]
