"""``negbench tune``: each strategy at its best before strategies are compared, found by optuna
with the same effort for every strategy and never a look at the test split.

One optuna study per (suite, strategy), named ``PREFIX:SUITE:STRATEGY`` (``--study PREFIX``,
default ``tune``), in one storage: ``sqlite:///negbench-runs/optuna.db`` by default, or any RDB
URL (``postgresql://user:pass@host/db``, needs the ``team`` extra's driver) that several machines
share.

Search space
    The nuisance parameters every strategy shares, each log-uniform around the value the run
    would otherwise use (the package default, a suite's own default, a spec's ``--set``):
    ``optim.lr`` in [lr/20, 20 lr], ``optim.weight_decay`` in [wd/100, 100 wd] (not searched
    when it is 0), and ``objective.temperature`` in [t/5, 5 t] for InfoNCE
    (``objective.margin`` in [m/5, 4 m] for the triplet objective instead); plus the strategy's
    own declared space (its config's ``space``: ``Float``/``Int``/``Choice``, see
    ``strategies/base.py``) as ``strategy.KNOB``. A key fixed with ``--set`` is not searched.
    Optuna's parameter names are these dotted run keys.

Trials
    Trial 0 of every study is the default configuration (enqueued when the study is created), so
    a study reports default against best under the same budget and seed; it is the reference and
    is never pruned. Every trial trains with the run seed ``--seed`` under ``--budget`` (the
    suite's own by default), with ``eval.split=val``: its value is the validation kNN accuracy
    (``knn_acc`` of a run evaluated on val). The test split is never read: a run evaluated on val
    does not even hold it (``harness.runner.Trainer``), and every evaluation reads its split
    through ``harness.evaluate.read_split``, which a test listens to.

Sampler and pruner
    TPE (optuna's defaults: 10 random start-up trials, then TPE, with its constant liar for
    trials running concurrently), seeded. Trial n of a study is drawn with the seed
    f(``--seed``, n), so one process draws the same sequence whether it ran the study at once
    or was interrupted and resumed, and concurrent workers, whose trials have different
    numbers, never draw the same point. A side effect, kept on purpose: during the random
    start-up trials, trial n of every study draws the same shared nuisance values (common
    random numbers across strategies).
    Pruning acts on intermediate values: the validation kNN accuracy (kNN alone: cheap) at
    ``--checkpoints`` fractions of the budget (default 0.25, 0.5, 0.75), reported at steps 25,
    50, 75 (percent of the budget). ``--pruner median`` (default): a trial stops at a checkpoint
    where its best value so far is below the median of the completed trials' values there, once
    ``--prune-after`` trials (default 3) have completed; ``--pruner hyperband``: optuna's
    Hyperband over the resource 1..100 percent of the budget (minimum: the first checkpoint),
    reduction factor 3; ``--pruner none``. The checkpoint evaluations are not training time:
    they count neither in a run's ``wall_seconds`` nor against a ``seconds`` budget. A trial's
    final evaluation is the kNN alone too: no linear probe (``eval.linear_epochs=0``), which the
    objective does not read and which costs twice the kNN on fashion-mnist; ``--set
    eval.linear_epochs=N`` brings it back (kept as the trial's ``val_linear_acc``).

Same effort
    Every study gets exactly ``--trials T`` trials that count: completed, pruned, and failed
    ones (a diverged run, a sampled combination the strategy rejects: its reason is kept in the
    trial's user attribute ``negbench.failure`` and its mlflow run). A trial that did not end by
    itself (its process was killed or interrupted) does not count: it stays in the study as FAIL
    without a reason, its mlflow run is marked KILLED, and a new trial takes its place (the
    default trial, if it was that one, is enqueued again). Running the same command again on the
    same storage continues each study's count up to T, so an interrupted tuning resumes, and a
    larger T extends a finished study. The settings that decide what a trial means (suite,
    strategy, budget, seed, ``--set``, checkpoints, pruner, search space) are stored with the
    study at creation; resuming or joining it with different ones is an error (use another
    ``--study`` prefix); ``--device``, ``--data-dir``, ``--workers`` and ``--heartbeat`` may
    differ between processes.

Workers
    ``--workers N`` runs N local processes (each with its share of the CPU threads, or one GPU
    each where there are N), all working on the studies in order, one trial at a time. Any
    process anywhere running the same command on the same ``--storage`` joins the same studies
    (start the first one alone, so that each study is created once). A running trial is known
    to be alive by its heartbeat (every ``--heartbeat`` seconds, default 10); one silent for
    three heartbeats is taken as interrupted. A process ends when each study has its T trials,
    waiting for trials still running elsewhere.

Tracking (mlflow, experiment ``tune`` or ``--experiment``)
    One parent run per study (tags ``negbench.role=study``, ``optuna.study``; params: the
    study's settings and search space; metrics: ``trial_val_knn_acc`` and ``best_val_knn_acc``
    against the trial number, and when the study is complete ``default_val_knn_acc``,
    ``best_val_knn_acc``, ``gain``, the trial counts and ``trial_seconds``). It is reused when
    the study is resumed and ended FINISHED when the study has its T trials. Each trial is a
    nested run (tag ``mlflow.parentRunId``) with the whole resolved config as params, its
    intermediate values as the history of ``val_knn_acc`` (step: samples seen; the last point
    is the final value), the usual run metrics, and tags ``optuna.trial`` (its number),
    ``optuna.study``, ``negbench.default`` and ``pruned`` (true/false). A pruned trial's run ends
    KILLED (it did not spend its budget: FINISHED means a trial that ran to its end) with tag
    ``pruned=true`` and no ``failure`` tag; a failed trial's run ends FAILED with its
    ``failure`` tag.

Export
    ``negbench tune --export FILE`` writes the best configuration of every study under the
    prefix in the storage as TOML: a table ``[SUITE.STRATEGY]`` of the searched dotted run keys
    with the best completed trial's values, under a comment naming the study, its best value, its
    trial counts and the budget and ``--set`` it was tuned under (those are not exported). An
    ablation spec applies them with ``tuned = "FILE"`` (see ``harness.spec``); its runs are
    tagged ``negbench.tuned``.

Modules
    This one is the command (its parser imports nothing heavy, so ``negbench --help`` stays
    fast); :mod:`~negbench.harness.tune_settings` (names and defaults),
    :mod:`~negbench.harness.tune_space` (the search space), :mod:`~negbench.harness.tune_job`
    (the job, its storage, the trial accounting), :mod:`~negbench.harness.tune_study` (a study at
    work, the loop over studies) and :mod:`~negbench.harness.tune_report` (summaries, tables,
    ``--export``). Their public names are also reachable here (loaded on first use).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from negbench.harness.console import add_tracking_uri, console, main_of, progress
from negbench.harness.pool import apply_thread_share, run_children
from negbench.harness.redact import redact
from negbench.harness.store import env_storage, resolve_uri, shown_uri, url_env
from negbench.harness.tune_settings import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_EXPERIMENT,
    DEFAULT_HEARTBEAT,
    DEFAULT_PREFIX,
    DEFAULT_PRUNE_AFTER,
    PRUNERS,
    default_storage,
)


# --------------------------------------------------------------------------- CLI
def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune", help="tune each strategy's hyperparameters with optuna (validation split only)",
        description="Tune every chosen strategy on a suite with optuna: one study per (suite, "
                    "strategy), the same number of trials for each, the shared nuisance "
                    "parameters (optim.lr, optim.weight_decay, objective.temperature) plus the "
                    "strategy's own declared space, a seeded TPE sampler, pruning on the "
                    "validation kNN accuracy at fractions of the budget. The objective is the "
                    "validation kNN accuracy; the test split is never read. Trial 0 of every "
                    "study is the default configuration. Rerun the same command to resume; run "
                    "it on other machines with the same --storage to share the work. Ends with "
                    "a table per suite: trials, default and best validation kNN, gain. "
                    "With --export FILE, write the best configuration of each study as TOML "
                    "that an ablation spec reads with tuned = \"FILE\".",
        epilog="Search ranges: optim.lr log-uniform in [lr/20, 20 lr] around the value a run "
               "would use, optim.weight_decay in [wd/100, 100 wd], objective.temperature in "
               "[t/5, 5 t] (objective.margin in [m/5, 4 m] for triplet); strategy.KNOB as the "
               "strategy declares (negbench strategies). A key given with --set is fixed, not "
               "searched. Failed and pruned trials count toward --trials; a trial whose process "
               "was killed does not, and is replaced. Trials are mlflow runs nested under one "
               "parent run per study (a pruned trial's run ends KILLED with tag pruned=true). "
               "Browse studies with optuna-dashboard (pip install optuna-dashboard; "
               "optuna-dashboard sqlite:///negbench-runs/optuna.db).")
    p.add_argument("--suite", default=None,
                   help="suite name, or several comma-separated (see `negbench suites`)")
    p.add_argument("--strategy", default=None,
                   help="strategy name, several comma-separated, or all")
    p.add_argument("--trials", type=int, default=None,
                   help="trials per study, the same for every strategy: completed, pruned and "
                        "failed ones all count")
    p.add_argument("--budget", default=None, metavar="KIND=AMOUNT",
                   help="every trial's training budget (samples=N, steps=N, flops=X, "
                        "seconds=X); default: the suite's")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config value for every trial (not searched), as `negbench run "
                        "--set` (repeatable)")
    p.add_argument("--seed", type=int, default=0,
                   help="the trials' run seed and the TPE sampler's seed (default 0)")
    p.add_argument("--pruner", default="median", choices=PRUNERS,
                   help="median (default), hyperband or none")
    p.add_argument("--prune-after", type=int, default=DEFAULT_PRUNE_AFTER, metavar="N",
                   help="the median pruner acts once N trials have completed (default "
                        f"{DEFAULT_PRUNE_AFTER})")
    p.add_argument("--checkpoints", default=",".join(map(str, DEFAULT_CHECKPOINTS)),
                   metavar="F,F,...",
                   help="fractions of the budget where a trial reports its validation kNN "
                        "accuracy and may be pruned (default 0.25,0.5,0.75)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="optuna storage (default: $NEGBENCH_STORAGE, else "
                        "sqlite:///negbench-runs/optuna.db); an RDB URL such as "
                        "postgresql://USER@HOST/DB to share studies between machines (keep a "
                        "password out of the command line: $NEGBENCH_STORAGE or ~/.pgpass)")
    p.add_argument("--study", default=DEFAULT_PREFIX, metavar="PREFIX",
                   help="study name prefix: studies are PREFIX:SUITE:STRATEGY (default tune)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes sharing the studies, each with its share of "
                        "the CPU threads or one GPU each (default 1)")
    p.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT, metavar="SECONDS",
                   help="a running trial's heartbeat; one silent for 3 heartbeats is taken as "
                        f"interrupted and replaced (default {DEFAULT_HEARTBEAT})")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the best configuration of every study under --study in "
                        "--storage to FILE (TOML) and exit")
    p.add_argument("--data-dir", default=None, help="where a suite looks for its data first")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    add_tracking_uri(p)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help="mlflow experiment of the studies' runs (default tune)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # i/n: a local worker
    p.add_argument("--events", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_tune, on_interrupt=" (run the same command again to resume)")
    return p


def job_from_args(args):
    """The :class:`~negbench.harness.tune_job.Job` the command line asks for."""
    from negbench import strategies, suites
    from negbench.harness.config import ConfigError, parse_budget, parse_sets
    from negbench.harness.store import sqlite_path
    from negbench.harness.tune_job import Job

    missing = [o for o, v in (("--suite", args.suite), ("--strategy", args.strategy),
                              ("--trials", args.trials)) if v is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required (or --export FILE to write the best "
                          "configurations found)")

    def names(text: str, allowed: list[str], what: str) -> tuple[str, ...]:
        if text.strip() == "all":
            return tuple(allowed)
        out = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        for n in out:
            if n not in allowed:
                hint = difflib.get_close_matches(n, allowed, n=3, cutoff=0.4)
                raise ConfigError(f"--{what}: unknown name {n!r}"
                                  + (f" (did you mean {', '.join(hint)}?)" if hint else "")
                                  + f"; allowed: {', '.join(allowed)}"
                                  + (", or all" if what == "strategy" else ""))
        if not out:
            raise ConfigError(f"--{what} names nothing; allowed: {', '.join(allowed)}")
        return out

    try:
        cps = tuple(float(x) for x in args.checkpoints.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--checkpoints must be comma-separated fractions, e.g. "
                          f"0.25,0.5,0.75; got {args.checkpoints!r}") from None
    sets = parse_sets(args.sets)
    if args.device:
        sets["device"] = args.device
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {args.workers}")
    storage = env_storage(args.storage) or default_storage()
    db = sqlite_path(storage)
    if db is not None and not db.is_absolute():  # workers and joiners see the same file
        storage = f"sqlite:///{db.resolve()}"
    return Job(suites=names(args.suite, suites.names(), "suite"),
               strategies=names(args.strategy, strategies.names(), "strategy"),
               trials=args.trials, budget=parse_budget(args.budget) if args.budget else None,
               sets=sets, seed=args.seed, pruner=args.pruner, prune_after=args.prune_after,
               checkpoints=cps, storage=storage, prefix=args.study,
               experiment=args.experiment, tracking_uri=args.tracking_uri,
               data_dir=args.data_dir, heartbeat=args.heartbeat)


def cmd_tune(args) -> int:
    from negbench.harness.tune_job import tally
    from negbench.harness.tune_report import export_best, summarize, summary_tables
    from negbench.harness.tune_study import open_studies, work

    if args.export:
        storage = env_storage(args.storage) or default_storage()
        written = export_best(storage, args.study, args.export)
        out = console(stderr=False)
        for s in written:
            out.print(f"{s.name}: best val kNN {s.best:.4f} (trial {s.best_trial}) -> "
                      f"[{s.suite}.{s.strategy}]", highlight=False)
        out.print(f"wrote {len(written)} configuration(s) to {args.export}", highlight=False)
        return 0
    job = job_from_args(args)
    if args.worker is not None:  # a local worker: trials only, events as JSON lines
        apply_thread_share()
        studies = open_studies(job, create=False)
        work(studies, lambda ev: print(json.dumps(ev, default=str), flush=True))
        return 0
    t0 = time.perf_counter()
    studies = open_studies(job)
    for s in studies:
        s.parent()
    con = console()
    total = len(studies) * job.trials
    done0 = sum(min(tally(s.trials()).counted, job.trials) for s in studies)
    failures: list[str] = []
    with progress(con, args.no_progress) as prog:
        overall = prog.add_task(
            f"tune: {len(studies)} studies x {job.trials} trials", total=total,
            completed=done0, stats="")
        rows: dict[int, Any] = {}

        def on_event(ev: dict, w: int = 0) -> None:
            kind = ev.get("event")
            row = rows.get(w)
            label = f"{ev.get('study', '').split(':', 1)[-1]} trial {ev.get('trial')}"
            if kind == "start":
                if row is None:
                    row = rows[w] = prog.add_task("", total=100, stats="")
                prog.update(row, description=f"worker {w}: {label}"
                            + (" (default)" if ev.get("default") else ""),
                            completed=0, stats="")
            elif kind == "progress" and row is not None:
                prog.update(row, completed=100 * ev["fraction"], stats=f"loss {ev['loss']:.3f}")
            elif kind == "checkpoint" and row is not None:
                prog.update(row, stats=f"val kNN {ev['value']:.3f} at {ev['fraction']:.0%}")
            elif kind == "end":
                state = ev["state"]
                if state in ("complete", "pruned", "failed"):
                    prog.advance(overall)
                if row is not None:
                    v = ev.get("value")
                    prog.update(row, completed=100, stats=state + (
                        f" val kNN {v:.4f}" if v is not None else ""))
                if state == "failed":
                    failures.append(f"{label}: {ev.get('reason', '')}")

        if args.workers == 1:
            work(studies, on_event)
        else:
            codes = run_children(worker_commands(args, job), lambda w, ev: on_event(ev, w),
                                 extra_env=url_env(job.storage, resolve_uri(job.tracking_uri)))
            for w, code in enumerate(codes):
                if code != 0:
                    failures.append(f"worker {w}: exited with status {code}")
            for s in studies:  # the workers close the parents; make sure
                n = s.poll()
                if n.counted >= job.trials and n.running == 0:
                    s.close_parent()
    wall = time.perf_counter() - t0
    summaries = [summarize(s.study) for s in studies]
    out = console(stderr=False)
    for t in summary_tables(summaries, job.trials):
        out.print(t)
    for line in failures:
        out.print(f"[red]failed[/red] {line}", highlight=False)
    out.print(f"tuning wall-clock {wall:,.1f} s; studies in {redact(job.storage)} "
              f"(prefix {job.prefix!r}), runs in mlflow experiment {job.experiment!r} at "
              f"{shown_uri(job.tracking_uri)}", highlight=False)
    incomplete = [s.name for s in summaries if s.tally.counted < job.trials or s.best is None]
    return 1 if incomplete else 0


def worker_commands(args, job) -> list[list[str]]:
    """The command lines of ``--workers N`` local workers on the job's studies (``python -m
    negbench.harness.tune ... --worker i/n --events``). The storage and tracking URLs are not on
    them: the children get those through their environment
    (:func:`~negbench.harness.store.url_env`)."""
    base = [sys.executable, "-m", "negbench.harness.tune", "--suite", ",".join(job.suites),
            "--strategy", ",".join(job.strategies), "--trials", str(job.trials),
            "--seed", str(job.seed), "--pruner", job.pruner,
            "--prune-after", str(job.prune_after),
            "--checkpoints", ",".join(map(str, job.checkpoints)),
            "--study", job.prefix, "--experiment", job.experiment,
            "--heartbeat", str(job.heartbeat), "--events"]
    if args.budget:
        base += ["--budget", args.budget]
    for s in args.sets:
        base += ["--set", s]
    for opt, v in (("--data-dir", job.data_dir), ("--device", args.device)):
        if v:
            base += [opt, v]
    n = args.workers
    return [base + ["--worker", f"{i}/{n}"] for i in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    """``negbench tune`` on its own (``python -m negbench.harness.tune``), with ``negbench``'s error
    handling: bad input is one line and status 2."""
    return main_of(add_parser, "tune", argv)


# the tuner's public names, from the modules that define them (PEP 562: loaded on first use, so
# that importing this module, to build the parser, imports neither torch nor optuna)
_API = {
    "negbench.harness.tune_settings": ("ATTR_DEFAULT", "ATTR_FAILURE", "ATTR_RUN",
                                       "ATTR_ORIGIN", "ATTR_SETTINGS", "ATTR_SURPLUS",
                                       "DEFAULT_STORAGE_DIR",
                                       "GRACE_BEATS", "INTERMEDIATE", "NUISANCE", "POLL_SECONDS",
                                       "TAG_PRUNED", "TAG_STUDY", "TAG_TRIAL", "study_name"),
    "negbench.harness.tags": ("DEFAULT_TAG", "ROLE_TAG"),
    "negbench.harness.tune_space": ("Dist", "default_params", "describe", "inside",
                                    "search_space", "suggest"),
    "negbench.harness.tune_job": ("Job", "Tally", "claims", "counts", "open_storage", "tally"),
    "negbench.harness.tune_study": ("StudyWork", "TrialEnd", "open_studies", "work"),
    "negbench.harness.tune_report": ("Summary", "export_best", "summarize", "summary_tables"),
}
_WHERE = {name: module for module, names in _API.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


if __name__ == "__main__":
    raise SystemExit(main())
