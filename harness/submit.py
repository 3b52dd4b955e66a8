"""``negbench submit``: an ablation spec's cells run by N ``negbench worker`` jobs on a cluster
(Slurm) or on this machine, submitted through `submitit <https://github.com/facebookincubator/
submitit>`_ (the ``submit`` extra: ``pip install 'negbench[submit]'``).

What a job runs
    Each job runs :class:`WorkerJob`: a Python function that calls ``negbench worker SPEC
    --no-progress`` in-process (:func:`negbench.harness.console.main_of`), so a job is exactly a
    worker on the spec's shared queue (:mod:`negbench.harness.worker`): it takes cells until
    none is left to start, retries the cells of workers that died, and logs the same lines and
    tables, to submitit's log files. In-process rather than a command
    (``submitit.helpers.CommandFunction``): the log streams while the job runs (a command's
    output is buffered until it ends), and the job's result is the worker's identity
    (``host:pid``, the ``negbench.worker`` tag of the runs it made) and exit status. A worker
    that cannot work at all (exit status 2: a store it cannot reach) raises, so Slurm and
    submitit show the job as failed. ``WorkerJob`` is checkpointable: a job preempted, or
    signalled ``--time`` minus 90 s, hands its cell back to the queue at once and is requeued
    by submitit (at most 3 times for timeouts); the requeued job joins the queue again.

The queue
    Created and seeded here, before anything is submitted, as ``negbench ablate`` does: the
    spec's study in the storage (``--storage``, else ``$NEGBENCH_STORAGE``, else ablate's own
    queue beside a sqlite tracking store, :func:`negbench.harness.store.queue_url`, so that
    ``ablate`` and ``submit`` of one spec share their cells), runs left RUNNING by dead local
    processes marked KILLED, failed cells and cells missing from the tracking store queued
    again. Jobs then only take cells. When every cell is already completed in the tracking
    store nothing is submitted; never more jobs than cells left to run (an idle worker would
    hold a node only to wait).

URLs and passwords
    The storage and tracking URLs reach the jobs through their environment
    (``NEGBENCH_STORAGE``, ``MLFLOW_TRACKING_URI``: :func:`negbench.harness.store.url_env`),
    never a command line, the sbatch script, submitit's pickles or a log line: they are set in
    this process's environment while it submits, which a local job inherits and ``sbatch``
    exports to a Slurm job (Slurm's default ``--export=ALL``; with ``--slurm-option
    export=VAR,...`` the two names are added to the list, and ``export=NONE`` is refused).
    Every URL printed here goes through :func:`negbench.harness.redact.redact`.

Slurm
    ``--partition``, ``--time`` (minutes, default 1440; sbatch refuses what the partition does
    not allow, and the command says why), ``--gpus-per-job`` (``--gpus-per-node``, one node and
    one task per job), ``--cpus-per-job`` (``--cpus-per-task``; the worker's torch threads
    follow ``SLURM_CPUS_PER_TASK``), ``--mem``, ``--array-parallelism`` (the ``%K`` throttle of
    the job array the N jobs are submitted as), ``--job-name``, ``--setup`` (shell lines run
    before the worker: ``module load ...``), and ``--slurm-option KEY=VALUE`` for any other
    sbatch option (``account=..., qos=..., constraint=...``; a bare ``KEY`` is a flag). A job
    runs this process's Python (``sys.executable``) in the directory it was submitted from:
    both, the spec and the log folder must be on a filesystem the nodes share. A sqlite queue
    is warned about (one line), not refused: sqlite files need a shared filesystem with
    working locks, which NFS often lacks; PostgreSQL (``--storage`` or ``$NEGBENCH_STORAGE``)
    is the cluster's queue.

Local
    submitit's local executor: N child processes of this machine, each with its share of the
    CPU threads, or ``--gpus-per-job`` GPUs of its own (default: one each where the machine has
    N GPUs, none otherwise, as ``ablate --workers N``), no time limit unless ``--time``. The
    Slurm options are ignored, with one line saying so.

Logs, waiting, output
    submitit's folder (``--folder``, default ``submitit/%j`` beside a sqlite tracking store,
    else ``negbench-runs/submitit/%j``): per job its pickles and ``JOBID_0_log.out`` / ``.err``.
    ``--wait`` (the default for local jobs, whose processes are children of this one) follows
    the jobs with a progress line (cells completed in the tracking store, jobs running) and
    ends with what each job's worker ran and the cells completed (exit status 1 when some are
    not); ``--no-wait`` (the default for Slurm, whose jobs may queue for hours) returns once
    submitted. Either way it prints the job ids, the log folder, how to watch the jobs and how
    to build the report afterwards (``negbench report --experiment NAME``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from negbench.harness.console import (
    EXIT_FAILED,
    EXIT_USAGE,
    UserError,
    add_tracking_uri,
    console,
    main_of,
    progress,
)
from negbench.harness.redact import has_password, redact
from negbench.harness.store import (
    DEFAULT_DIR,
    env_storage,
    sqlite_path,
    url_env,
)

EXECUTORS = ("slurm", "local")
INSTALL = "pip install 'negbench[submit]'"
DEFAULT_TIME = 24 * 60  # minutes a Slurm job may run unless --time says otherwise
LOCAL_TIME = 365 * 24 * 60  # a local job: no limit in practice (submitit's own is 2 minutes)
POLL = 2.0  # seconds between looks at the jobs while waiting
THREADS_ENV = "NEGBENCH_THREADS"  # as negbench.harness.pool (not imported: it stays light)
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# --------------------------------------------------------------------------- CLI
def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``submit`` to argparse subparsers ``sub`` (whose parser_class the caller set)."""
    p = sub.add_parser(
        "submit", help="submit N `negbench worker` jobs on a spec's queue (Slurm or local)",
        description="Submit N jobs through submitit (Slurm, or local processes), each a "
                    "`negbench worker` on the spec's shared work queue: the queue is created "
                    "and seeded first, the jobs only take cells, each cell runs once. The "
                    "storage and tracking URLs reach the jobs through their environment, "
                    "never their command line or script. Needs the submit extra: "
                    f"{INSTALL}.",
        epilog="On a cluster use a PostgreSQL queue (--storage or $NEGBENCH_STORAGE) and an "
               "mlflow tracking server ($MLFLOW_TRACKING_URI); a sqlite file works only on a "
               "filesystem every node shares with working locks. Afterwards: negbench report "
               "--experiment NAME (the spec's name).")
    p.add_argument("spec", help="the spec file (e.g. specs/standard.toml)")
    p.add_argument("--executor", default="slurm", choices=EXECUTORS,
                   help="slurm (default: sbatch, one job array) or local (processes here)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker jobs to submit (default 1; never more than cells left to run)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the queue's optuna storage (default: $NEGBENCH_STORAGE, else the queue "
                        "of `negbench ablate` beside a sqlite tracking store); keep a password "
                        "out of the command line: $NEGBENCH_STORAGE or ~/.pgpass")
    add_tracking_uri(p, example="http://host:5000")
    p.add_argument("--data-dir", default=None, help="where suites look for their data first "
                                                    "(as the jobs' nodes see it)")
    p.add_argument("--folder", default=None, metavar="DIR",
                   help="submitit's log folder, %%j is the job id (default: submitit/%%j beside "
                        "a sqlite tracking store, else negbench-runs/submitit/%%j)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="follow the jobs until they end, with a progress line (default: wait "
                        "for local jobs, not for Slurm jobs)")
    p.add_argument("--heartbeat", type=int, default=20, metavar="S",
                   help="seconds between a running cell's heartbeats (default 20)")
    p.add_argument("--grace", type=int, default=60, metavar="S",
                   help="seconds without a heartbeat after which a cell is retried (default 60)")
    p.add_argument("--time", type=int, default=None, metavar="MINUTES",
                   help=f"a job's time limit (default: {DEFAULT_TIME} on Slurm, none locally)")
    p.add_argument("--gpus-per-job", type=int, default=None, metavar="G",
                   help="GPUs per job (Slurm: --gpus-per-node; local: default one each where "
                        "this machine has N GPUs, else none)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line each job runs before its worker, e.g. 'module load cuda' "
                        "(repeatable)")
    s = p.add_argument_group("Slurm")
    s.add_argument("--partition", default=None, help="the partition (default: the cluster's)")
    s.add_argument("--cpus-per-job", type=int, default=None, metavar="C",
                   help="--cpus-per-task; the worker's torch threads follow it")
    s.add_argument("--mem", default=None, metavar="SIZE", help="memory per job, e.g. 16G")
    s.add_argument("--array-parallelism", type=int, default=None, metavar="K",
                   help="at most K of the job array's N jobs run at once (default N)")
    s.add_argument("--job-name", default=None, help="default negbench-SPECNAME")
    s.add_argument("--slurm-option", dest="slurm_options", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=proj, qos=high, "
                        "constraint=a100; a bare KEY is a flag (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no live view while waiting")
    p.set_defaults(handler=cmd_submit,
                   on_interrupt=" (Slurm jobs go on; local jobs stop with it: submit again, "
                                "or run `negbench worker`, to finish the grid)")
    return p


# --------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class WorkerJob:
    """What each submitted job runs: ``negbench worker SPEC`` in the job's own process, its
    storage and tracking URLs from its environment. Holds no URL: it is pickled into the log
    folder."""

    spec: str
    data_dir: str | None = None
    heartbeat: int = 20
    grace: int = 60

    def argv(self) -> list[str]:
        out = ["worker", self.spec, "--no-progress", "--heartbeat", str(self.heartbeat),
               "--grace", str(self.grace)]
        return out + (["--data-dir", self.data_dir] if self.data_dir else [])

    def __call__(self) -> dict:
        from negbench.harness.ablate_cli import add_parser
        from negbench.harness.worker import worker_id

        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and not os.environ.get(THREADS_ENV):  # torch would take every core of the node
            os.environ[THREADS_ENV] = os.environ["OMP_NUM_THREADS"] = cpus
        argv = self.argv()
        code = main_of(add_parser, argv[0], argv[1:])  # `negbench worker ...`, in-process
        if code == EXIT_USAGE:  # it could not work at all: show the job as failed
            raise RuntimeError(f"negbench worker exited with status {code} (see the line "
                               "above in this job's log)")
        return {"worker": worker_id(), "exit": code}

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: submitit requeues the job, which joins the queue again
        (the worker has handed its cell back when the signal stopped it)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


# --------------------------------------------------------------------------- the command
def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError(f"submitit is not installed; it comes with the submit extra: "
                        f"{INSTALL}") from None
    return submitit


def _absolute(url: str) -> str:
    """A sqlite URL with an absolute path (jobs may start elsewhere); any other URL as is."""
    db = sqlite_path(url)
    return url if db is None or db.is_absolute() else f"sqlite:///{db.resolve()}"


def _check(args) -> None:
    """The options, before anything is opened or imported."""
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1; got {args.jobs}")
    for opt, v, low in (("--time", args.time, 1), ("--gpus-per-job", args.gpus_per_job, 0),
                        ("--cpus-per-job", args.cpus_per_job, 1),
                        ("--array-parallelism", args.array_parallelism, 1),
                        ("--heartbeat", args.heartbeat, 1), ("--grace", args.grace, 1)):
        if v is not None and v < low:
            raise UserError(f"{opt} must be >= {low}; got {v}")
    slurm_options(args.slurm_options)
    if args.executor == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise UserError(f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH "
                            "(submit from a login node of the cluster), or use --executor "
                            "local")


def slurm_options(items: Sequence[str]) -> dict[str, str | bool]:
    """``--slurm-option`` values as sbatch options: ``KEY=VALUE`` or a bare ``KEY`` (a flag)."""
    out: dict[str, str | bool] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not _KEY.match(key) or (eq and not value.strip()):
            raise UserError(f"--slurm-option {item!r}: expected KEY=VALUE (an sbatch option "
                            "without its dashes, e.g. account=proj) or a bare KEY")
        out[key.replace("_", "-")] = value.strip() if eq else True
    return out


def _export(options: dict[str, str | bool], names: Sequence[str]) -> dict[str, str]:
    """Make sbatch export ``names`` to the jobs where the user narrowed what it exports
    (``--slurm-option export=...``, or ``$SBATCH_EXPORT``, which Slurm ranks above the script's
    #SBATCH lines); the environment sbatch must run with for it (Slurm's default exports
    all: nothing to add)."""
    given = options.get("export", os.environ.get("SBATCH_EXPORT"))
    if not isinstance(given, str) or given.split(",")[0].strip().upper() == "ALL":
        return {}
    if given.strip().upper() == "NONE":
        raise UserError("sbatch export=NONE would keep the queue and tracking URLs from the "
                        "jobs: use export=ALL, or a list of variables (negbench adds "
                        f"{', '.join(names)} to it)")
    listed = [v.strip() for v in given.split(",") if v.strip()]
    value = ",".join(dict.fromkeys(listed + [n for n in names if n not in listed]))
    if "export" in options:
        options["export"] = value
    return {"SBATCH_EXPORT": value}


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in this process's environment for the block: what a local job inherits and
    sbatch exports."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_folder(tracking_uri: str) -> Path:
    """submitit's folder: ``submitit/%j`` beside a sqlite tracking store, else under
    ``negbench-runs/``."""
    db = sqlite_path(tracking_uri)
    root = db.resolve().parent if db is not None else DEFAULT_DIR.resolve()
    return root / "submitit" / "%j"


def _local_gpus(args, n: int) -> list[tuple[int, ...]]:
    """The GPUs of each of ``n`` local jobs (as this process numbers them)."""
    import torch

    have = torch.cuda.device_count()
    per = args.gpus_per_job if args.gpus_per_job is not None else int(have >= n > 0)
    if per == 0:
        return [()] * n
    if have < per * n:
        raise UserError(f"--gpus-per-job {per} for {n} local job(s) needs {per * n} GPUs; this "
                        f"machine has {have}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    if ids and not all(v.isdigit() for v in ids):
        raise UserError(f"CUDA_VISIBLE_DEVICES={visible!r} names devices by id, which the local "
                        "executor cannot pass on: set it to device numbers, or unset it")
    real = [int(v) for v in ids] if ids else list(range(have))
    return [tuple(real[i * per:(i + 1) * per]) for i in range(n)]


def _submit_local(submitit, job: WorkerJob, folder: Path, n: int, args,
                  urls: dict[str, str]) -> list:
    ignored = [o for o, v in (("--partition", args.partition), ("--cpus-per-job",
                                                                 args.cpus_per_job),
                              ("--mem", args.mem), ("--array-parallelism",
                                                    args.array_parallelism),
                              ("--job-name", args.job_name),
                              ("--slurm-option", args.slurm_options)) if v]
    if ignored:
        console().print(f"note: --executor local ignores {', '.join(ignored)}", highlight=False)
    ex = submitit.LocalExecutor(folder=str(folder))
    ex.update_parameters(timeout_min=args.time or LOCAL_TIME)
    if args.setup:
        ex.update_parameters(setup=list(args.setup))
    threads = str(max(1, (os.cpu_count() or 1) // n))  # each job its share of the cores
    jobs = []
    for gpus in _local_gpus(args, n):
        ex.update_parameters(gpus_per_node=len(gpus), visible_gpus=gpus)
        with _environ({**urls, THREADS_ENV: threads, "OMP_NUM_THREADS": threads}):
            jobs.append(ex.submit(job))
    return jobs


def _submit_slurm(submitit, job: WorkerJob, folder: Path, n: int, args, name: str,
                  urls: dict[str, str]) -> list:
    extra = slurm_options(args.slurm_options)
    env = {**urls, **_export(extra, list(urls))}
    ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=3)
    params: dict = {"job_name": args.job_name or f"negbench-{name}",
                    "time": args.time or DEFAULT_TIME, "nodes": 1, "ntasks_per_node": 1}
    for key, v in (("partition", args.partition), ("gpus_per_node", args.gpus_per_job or None),
                   ("cpus_per_task", args.cpus_per_job), ("mem", args.mem),
                   ("array_parallelism", args.array_parallelism)):
        if v is not None:
            params[key] = v
    if args.setup:
        params["setup"] = list(args.setup)
    if extra:
        params["additional_parameters"] = extra
    ex.update_parameters(**params)
    with _environ(env), ex.batch():  # one job array; sbatch exports the URLs to it
        jobs = [ex.submit(job) for _ in range(n)]
    return jobs


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in redact(str(e)).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def cmd_submit(args) -> int:
    _check(args)
    submitit = _submitit()
    from negbench.harness import worker as W
    from negbench.harness.ablate import close_orphans
    from negbench.harness.spec import load_spec
    from negbench.harness.store import check_tracking_uri, completed, queue_url, resolve_uri

    spec_path = str(Path(args.spec).resolve())
    spec = load_spec(spec_path)
    cells = spec.cells()
    tracking = _absolute(check_tracking_uri(resolve_uri(args.tracking_uri)))
    storage = _absolute(env_storage(args.storage) or queue_url(tracking))
    err, out = console(), console(stderr=False)
    if args.executor == "slurm":
        local = [what for what, url in (("work queue", storage), ("tracking store", tracking))
                 if sqlite_path(url) is not None]
        if local:
            many = len(local) > 1
            err.print(f"warning: the {' and the '.join(local)} {'are' if many else 'is a'} "
                      f"sqlite file{'s' if many else ''}: every node must reach "
                      f"{'them' if many else 'it'} on a shared filesystem with working locks "
                      "(NFS often has none); a PostgreSQL --storage and an mlflow server are "
                      "safer", highlight=False, soft_wrap=True)

    # the queue, created and seeded before any job starts: the jobs only take cells
    orphans = close_orphans(tracking, spec.name)
    queue = W.open_queue(spec, cells, storage, tracking, heartbeat=args.heartbeat,
                         grace=args.grace)
    done = completed(tracking, spec.name)
    again, lost = W.requeue(queue, set(done))
    todo = sum(c.key not in done for c in cells)
    for k, what in ((orphans, "run(s) left RUNNING by a killed process marked KILLED"),
                    (again, "failed cell(s) queued again"),
                    (lost, "cell(s) missing from the tracking store queued again")):
        if k:
            err.print(f"{k} {what}", highlight=False)
    where = f"experiment {spec.name!r} at {redact(tracking)}"
    if todo == 0:
        out.print(f"all {len(cells)} cells of {spec.name!r} are completed in {where}: nothing "
                  f"to submit; report: negbench report --experiment {spec.name}",
                  highlight=False, soft_wrap=True)
        return 0
    n = min(args.jobs, todo)
    if n < args.jobs:
        err.print(f"submitting {n} job(s), not {args.jobs}: only {todo} cell(s) left to run",
                  highlight=False)

    folder = Path(args.folder).expanduser().resolve() if args.folder else default_folder(tracking)
    job = WorkerJob(spec_path, str(Path(args.data_dir).resolve()) if args.data_dir else None,
                    args.heartbeat, args.grace)
    urls = url_env(storage, tracking)
    try:
        if args.executor == "local":
            jobs = _submit_local(submitit, job, folder, n, args, urls)
        else:
            jobs = _submit_slurm(submitit, job, folder, n, args, spec.name, urls)
    except (ValueError, OSError, RuntimeError) as e:  # sbatch's refusal, a bad parameter
        raise UserError(f"{args.executor} did not take the jobs: {_first_line(e)}") from None

    ids = [str(j.job_id) for j in jobs]
    out.print(f"submitted {n} {args.executor} job(s) of `negbench worker` on {spec.name!r} "
              f"({todo} of {len(cells)} cells to run): {', '.join(ids)}", highlight=False,
              soft_wrap=True)
    out.print(f"queue {queue.study.study_name} in {redact(storage)}; runs in {where}",
              highlight=False, soft_wrap=True)
    log = jobs[0].paths.stderr
    out.print(f"logs: {log} (stderr, the .out beside it), each job's alike in {folder}",
              highlight=False, soft_wrap=True)
    watch = (f"squeue -j {ids[0].split('_')[0]}" if args.executor == "slurm"
             else f"ps -p {','.join(ids)}")
    out.print(f"watch: {watch}; tail -f {log}", highlight=False, soft_wrap=True)
    report = f"negbench report --experiment {spec.name}"
    if args.tracking_uri and not has_password(args.tracking_uri):
        report += f" --tracking-uri {args.tracking_uri}"
    wait = args.wait if args.wait is not None else args.executor == "local"
    if not wait:
        out.print(f"when they are done: {report}", highlight=False, soft_wrap=True)
        return 0
    return _wait(jobs, ids, spec, cells, tracking, report, args.no_progress)


def _wait(jobs: list, ids: list[str], spec, cells, tracking: str, report: str,
          quiet: bool) -> int:
    """Follow the jobs to their end: a progress line, then what each job's worker ran; exit
    status 1 when some cells are not completed."""
    from negbench.harness.store import completed, search_runs
    from negbench.harness.tags import CELL_TAG, WORKER_TAG

    keys = {c.key for c in cells}
    err, out = console(), console(stderr=False)

    def counts() -> tuple[int, int]:
        done = sum(k in keys for k in completed(tracking, spec.name))
        return done, sum(not j.done() for j in jobs)

    last = None
    with progress(err, quiet) as prog:
        bar = prog.add_task(f"{spec.name}: {len(jobs)} job(s)", total=len(keys), stats="")
        while True:
            done, running = counts()
            prog.update(bar, completed=done, stats=f"{running} of {len(jobs)} job(s) running")
            if quiet and (done, running) != last:  # a plain line where there is no live view
                err.print(f"{done} of {len(keys)} cells completed; {running} of {len(jobs)} "
                          "job(s) running", highlight=False)
                last = (done, running)
            if running == 0:
                break
            time.sleep(POLL)

    ran: dict[str, int] = {}
    for r in search_runs(tracking, spec.name, "FINISHED"):
        if r.data.tags.get(CELL_TAG) in keys:
            who = r.data.tags.get(WORKER_TAG, "?")
            ran[who] = ran.get(who, 0) + 1
    failed = 0
    for i, j in zip(ids, jobs, strict=True):
        try:
            res = j.result()
        except Exception as e:  # noqa: BLE001 - submitit's job errors: the log says why
            failed += 1
            out.print(f"[red]job {i} failed[/red]: {_first_line(e)} (log: {j.paths.stderr})",
                      highlight=False, soft_wrap=True)
            continue
        who = res.get("worker", "?")
        out.print(f"job {i}: worker {who} ran {ran.get(who, 0)} cell(s), exit status "
                  f"{res.get('exit')}", highlight=False)
    done = sum(k in keys for k in completed(tracking, spec.name))
    out.print(f"{done} of {len(keys)} cells completed; runs in experiment {spec.name!r} at "
              f"{redact(tracking)}; report: {report}", highlight=False, soft_wrap=True)
    return 0 if done == len(keys) and not failed else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``negbench submit`` on its own (``python -m negbench.harness.submit``), with
    ``negbench``'s error handling: bad input is one line and status 2."""
    return main_of(add_parser, "submit", argv)


__all__ = ["DEFAULT_TIME", "EXECUTORS", "INSTALL", "WorkerJob", "add_parser", "cmd_submit",
           "default_folder", "main", "slurm_options"]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
