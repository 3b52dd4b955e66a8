"""Running an ablation spec: every cell once, whoever runs it, resumable, failures isolated, spend
audited.

A cell is done when the tracking store holds a FINISHED run tagged with its key
(``negbench.cell``). ``negbench ablate`` takes its cells from the same work queue as
``negbench worker`` (:mod:`negbench.harness.worker`: an optuna study with a grid sampler over the
cells, heartbeats, a grace period), kept by default in a sqlite file beside the tracking store
(:func:`negbench.harness.store.queue_url`). So:

- two ablations of one spec started together on one store share its cells: each cell runs once;
- ``--workers N`` local child processes, each with its share of the CPU threads (or one GPU each
  where several exist), take cells from that queue as they become free;
- an ablation killed at any moment (``kill -9`` included) resumes when run again, with no
  completed run lost or repeated: its RUNNING run is marked KILLED and its cell is taken again at
  once (a process that died on this machine is known dead by its process token; one on another
  machine after the grace period);
- a cell that fails (a NaN loss, a contract violation, ...) is recorded FAILED with its reason,
  and the others go on; the next run of the spec tries it again.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from negbench.harness import worker as W
from negbench.harness.pool import apply_thread_share, run_children, token_alive
from negbench.harness.spec import Cell, Spec
from negbench.harness.store import (
    CELL_TAG,
    close_runs,
    completed,
    queue_url,
    resolve_uri,
    url_env,
)

__all__ = ["CELL_TAG", "Outcome", "audit", "close_orphans", "completed", "queue_url",
           "run_ablation", "run_child"]

POLL = 1.0  # seconds between looks at the queue while other processes hold the last cells


@dataclass
class Outcome:
    """What :func:`run_ablation` did besides running cells."""

    queue: str
    orphans: int = 0  # runs of dead processes marked KILLED
    failed_again: int = 0  # failed cells queued again
    missing_again: int = 0  # cells the queue had as done but the store lacked, queued again
    worker_codes: list[int] = field(default_factory=list)


def run_ablation(spec: Spec, cells: list[Cell], spec_path: str, *, workers: int = 1,
                 tracking_uri: str | None, data_dir: str | None = None,
                 queue: str | None = None, on_start: Callable[[Outcome], None] | None = None,
                 on_event: Callable[[int, dict], None] | None = None) -> Outcome:
    """Run the spec's cells from the shared queue (``queue``, default :func:`queue_url`): in this
    process, or in ``workers`` child processes. ``on_start`` hears what was set up before any
    cell runs; ``on_event(worker, event)`` every event (``queue``: counts; ``start``,
    ``progress``, ``done``, ``failed``, ``skipped``: a cell's, named by its label)."""
    url = queue or queue_url(tracking_uri)
    out = Outcome(url)
    out.orphans = close_orphans(tracking_uri, spec.name)
    q = W.open_queue(spec, cells, url, tracking_uri)  # its tables, before any child opens it
    out.failed_again, out.missing_again = W.requeue(q, set(completed(tracking_uri, spec.name)))
    if on_start is not None:
        on_start(out)

    def emit(kind: str, cell: Cell | None, info: dict) -> None:
        if on_event is not None:
            on_event(0, _event(kind, cell, info))

    if workers == 1:
        W.work(spec, cells, q, tracking_uri=tracking_uri, data_dir=data_dir, poll=POLL,
               on_event=emit)
        return out
    # the queue and tracking URLs go through the children's environment, never their argv
    cmd = [sys.executable, "-m", "negbench.harness.cli", "ablate", spec_path, "--events"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out.worker_codes = run_children([cmd] * workers, on_event or (lambda w, ev: None),
                                    extra_env=url_env(url, resolve_uri(tracking_uri)))
    return out


def run_child(spec: Spec, cells: list[Cell], queue: str, *, tracking_uri: str | None,
              data_dir: str | None = None) -> int:
    """A local worker of ``ablate --workers N``: cells from ``queue``, events as JSON lines on
    stdout; how many cells it ran."""
    apply_thread_share()

    def emit(kind: str, cell: Cell | None, info: dict) -> None:
        print(json.dumps(_event(kind, cell, info), default=str), flush=True)

    q = W.open_queue(spec, cells, queue, tracking_uri)
    return W.work(spec, cells, q, tracking_uri=tracking_uri, data_dir=data_dir, poll=POLL,
                  on_event=emit)


def close_orphans(tracking_uri: str | None, experiment: str) -> int:
    """Mark KILLED the RUNNING cell runs of ``experiment`` whose process is known dead: it ran on
    this machine (its process token, or an older run's ``host:pid``) and is gone, or the run has
    no worker at all (an ablation older than the shared queue); how many. A run another process
    here or elsewhere is still making is left alone."""
    node = platform.node()

    def dead(tags: dict) -> bool:
        if CELL_TAG not in tags:
            return False
        if tags.get(W.PROCESS_TAG):
            return token_alive(tags[W.PROCESS_TAG]) is False
        who = tags.get(W.WORKER_TAG)
        if who is None:
            return True
        host, _, pid = who.rpartition(":")
        return host == node and pid.isdigit() and not _pid_exists(int(pid))

    return close_runs(tracking_uri, experiment, dead, "the process running it was killed")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _event(kind: str, cell: Cell | None, info: dict) -> dict:
    return {"event": kind, "cell": None if cell is None else cell.label, **info}


def audit(spec: Spec, uri: str | None) -> list[str]:
    """Every completed run of the spec whose spent budget differs from its cell's budget, or
    from the other runs of its suite: one line each (empty: all spent the same)."""
    done = completed(uri, spec.name)
    lines = []
    by_suite: dict[str, set] = {}
    for cell in spec.cells():
        r = done.get(cell.key)
        if r is None:
            continue
        m = r.data.metrics
        spent, total = m.get("budget_spent", math.nan), m.get("budget_total", math.nan)
        want = cell.config.budget.amount
        if not (total == want and spent >= total and spent < total * (1 + 1e-9) + _slack(cell)):
            lines.append(f"{cell.label}: spent {spent:g} of {cell.config.budget.kind}="
                         f"{want:g} (recorded total {total:g})")
        by_suite.setdefault(cell.config.suite, set()).add((cell.config.budget.kind, total))
    for suite, budgets in by_suite.items():
        if len(budgets) > 1:
            lines.append(f"{suite}: runs under different budgets: "
                         + ", ".join(f"{k}={a:g}" for k, a in sorted(budgets)))
    return lines


def _slack(cell: Cell) -> float:
    """How far past its budget a run may stop: a samples or steps budget ends exactly; FLOPs
    and seconds end within the step that crosses them."""
    kind = cell.config.budget.kind
    return 0.0 if kind in ("samples", "steps") else math.inf
