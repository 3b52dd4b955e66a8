"""Running an ablation spec: every cell once, resumable, failures isolated, spend audited.

A cell is done when the tracking store holds a FINISHED run tagged with its key
(``negbench.cell``); running a spec again skips those, so an ablation killed at any moment
(``kill -9`` included) resumes where it stopped, with no completed run lost or repeated. A run
left RUNNING by a killed process is marked KILLED when the ablation starts again (one ablation
process per experiment: see ``--workers`` for parallel local work). A cell that fails (a NaN
loss, a contract violation, ...) is recorded FAILED with its reason, and the others go on; it is
tried again on the next run of the spec.

Local workers (``--workers N``) are child processes, each with its share of the CPU threads (or
one GPU each where several exist), taking cells from one work queue as they become free (the
queue of ``negbench worker``, in a sqlite file made for the call), so no two workers run the same
cell and a long cell does not hold back the others' share; each skips what is already done.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable

from negbench.harness.spec import Cell, Spec

CELL_TAG = "negbench.cell"
SPEC_TAG = "negbench.spec"


def _client(uri: str | None):
    import logging

    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):  # a new sqlite store's migration chatter
        logging.getLogger(name).setLevel(logging.WARNING)

    from negbench.harness.tracking import resolve_uri

    return MlflowClient(tracking_uri=resolve_uri(uri))


def _runs(uri: str | None, experiment: str, status: str | None = None) -> list:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"attributes.status = '{status}'" if status else ""
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def completed(uri: str | None, experiment: str) -> dict[str, object]:
    """Cell key -> its FINISHED run, for every completed cell of ``experiment``."""
    return {r.data.tags[CELL_TAG]: r for r in _runs(uri, experiment, "FINISHED")
            if CELL_TAG in r.data.tags}


def close_runs(uri: str | None, experiment: str, which: Callable[[dict], bool],
               reason: str) -> int:
    """Mark the RUNNING runs of ``experiment`` whose tags satisfy ``which`` as KILLED, with
    ``reason`` as their failure; how many there were."""
    client = _client(uri)
    stale = [r for r in _runs(uri, experiment, "RUNNING") if which(r.data.tags)]
    for r in stale:
        client.set_tag(r.info.run_id, "failure", reason)
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(stale)


def close_stale(uri: str | None, experiment: str) -> int:
    """Mark the runs a killed ablation left RUNNING as KILLED; how many there were."""
    return close_runs(uri, experiment, lambda tags: CELL_TAG in tags,
                      "the process running it was killed")


def run_cell(spec: Spec, cell: Cell, *, tracking_uri: str | None, data_dir: str | None,
             emit: Callable[..., None], tags: dict[str, str] | None = None
             ) -> tuple[dict[str, float] | None, str | None]:
    """Run one cell, tracked with its key; ``emit(kind, cell, **info)`` hears its start,
    progress and end. (its metrics, None), or (None, the reason) when it failed: a failure is
    recorded in the tracking store and raised no further."""
    from negbench.harness.runner import RunFailed, run
    from negbench.strategies import StrategyError

    emit("start", cell)

    def on_log(point) -> None:
        emit("progress", cell, fraction=point["budget_fraction"], loss=point["loss"])

    try:
        r = run(cell.config, tracking_uri=tracking_uri, experiment=spec.name,
                data_dir=data_dir, on_log=on_log,
                extra_tags={CELL_TAG: cell.key, SPEC_TAG: spec.name, **cell.tags,
                            **(tags or {})})
    except (RunFailed, StrategyError, FloatingPointError, RuntimeError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
        emit("failed", cell, reason=reason)
        return None, reason
    emit("done", cell, wall=r.metrics.get("wall_seconds", math.nan))
    return r.metrics, None


def run_cells(spec: Spec, cells: list[Cell], *, tracking_uri: str | None,
              data_dir: str | None = None,
              on_event: Callable[[str, Cell, dict], None] | None = None) -> None:
    """Run ``cells`` one after another in this process, skipping completed ones."""

    def emit(kind: str, cell: Cell, **info) -> None:
        if on_event is not None:
            on_event(kind, cell, info)

    for cell in cells:
        done = completed(tracking_uri, spec.name)  # re-read: another worker may have finished it
        if cell.key in done:
            emit("skipped", cell)
            continue
        run_cell(spec, cell, tracking_uri=tracking_uri, data_dir=data_dir, emit=emit)


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


# --------------------------------------------------------------------------- local workers
def worker_env(i: int, n: int) -> dict[str, str]:
    """Environment of local worker ``i`` of ``n``: its share of the CPU threads, or one GPU."""
    env = dict(os.environ)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA runtime: CPU shares
        gpus = 0
    if gpus >= n:
        env["CUDA_VISIBLE_DEVICES"] = str(i)
    threads = max(1, (os.cpu_count() or 1) // n)
    env["NEGBENCH_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def spawn_workers(spec: Spec, cells: list[Cell], spec_path: str, n: int,
                  tracking_uri: str | None, data_dir: str | None,
                  on_line: Callable[[int, dict], None]) -> list[int]:
    """Start ``n`` child processes (``negbench ablate SPEC --queue URL --events``) that take
    cells from one work queue (:mod:`negbench.harness.worker`, in a sqlite file made for this call)
    as
    they become free, pass each JSON event line to ``on_line(i, event)``, and return their exit
    codes."""
    import shutil
    import tempfile

    from negbench.harness import worker as W

    tmp = tempfile.mkdtemp(prefix="negbench-queue-")
    try:
        url = f"sqlite:///{tmp}/queue.db"
        W.open_queue(spec, cells, url, tracking_uri)  # the tables, before the children
        procs = []
        for i in range(n):
            cmd = [sys.executable, "-m", "negbench.harness.cli", "ablate", spec_path, "--queue",
                   url, "--events"]
            if tracking_uri:
                cmd += ["--tracking-uri", tracking_uri]
            if data_dir:
                cmd += ["--data-dir", data_dir]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                          env=worker_env(i, n)))

        def pump(i: int, p: subprocess.Popen) -> None:
            for line in p.stdout:
                try:
                    on_line(i, json.loads(line))
                except json.JSONDecodeError:
                    continue

        threads = [threading.Thread(target=pump, args=(i, p), daemon=True)
                   for i, p in enumerate(procs)]
        for t in threads:
            t.start()
        codes = [p.wait() for p in procs]
        for t in threads:
            t.join(timeout=5)
        return codes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)




