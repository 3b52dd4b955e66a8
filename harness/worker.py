"""An ablation's work queue in optuna's RDB storage, shared by every process that runs the spec:
``negbench worker`` processes on any number of machines, and ``negbench ablate`` (with its local
workers) on one.

The queue is an optuna study (name ``negbench-ablate:<spec name>:<grid hash>``) with a
:class:`optuna.samplers.GridSampler` over the spec's cell keys. optuna hands out the work:

- the first N trials of a grid of N cells are mapped to distinct grid points by their trial
  number, which the storage assigns atomically, so workers starting together never take the
  same cell;
- a worker killed mid-cell stops its heartbeat; after the grace period, the next worker that
  checks marks that trial FAIL and enqueues a retry (optuna's ``RetryHeartbeatStaleTrialCallback``),
  which ``ask()`` hands to exactly one worker (a WAITING trial is claimed under a row lock, or on
  sqlite under the database's write lock: :mod:`negbench.harness.store`). A worker that died on
  this machine is known dead at once (its process token, :mod:`negbench.harness.pool`), without
  waiting for the grace period;
- a trial that optuna hands out for a cell another trial is running (the sampler's fallback once
  the grid is exhausted, or two retries of one cell) is ended PRUNED as a duplicate, without
  running anything.

The tracking store stays the record of what is done: a cell whose FINISHED run is already there
(from an earlier ablation or worker) is closed without running again. A cell whose run fails is
recorded FAILED with its reason in mlflow and its trial ends FAIL; a process that joins later
queues it again (:func:`requeue`), as it does a cell the queue has as done but the tracking
store lacks (a deleted run, a new store). A worker leaves when no cell is left to start and
waits while other workers still hold cells, so it can retry theirs if they die.

Storage: any SQLAlchemy URL optuna accepts. PostgreSQL (``postgresql+psycopg2://...``, the
``team`` extra brings the driver) for many machines; a sqlite file serves processes on one
machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from negbench.harness.pool import process_token, token_alive
from negbench.harness.spec import Cell, Spec
from negbench.harness.store import (
    close_runs,
    completed,
    file_lock,
    open_optuna,
    sqlite_path,
)
from negbench.harness.tags import CELL_TAG, PROCESS_TAG, SPEC_TAG, TRIAL_TAG, WORKER_TAG

PARAM = "cell"
MAX_RETRY = 3  # how often a dead or interrupted worker's cell is handed out again
ATTR_WORKER = "worker"
ATTR_PROCESS = "process"


def study_name(spec: Spec, cells: list[Cell]) -> str:
    """The queue of this grid: a changed grid gets a new study (its done cells are still skipped
    through the tracking store)."""
    h = hashlib.sha256("\n".join(sorted(c.key for c in cells)).encode()).hexdigest()[:12]
    return f"negbench-ablate:{spec.name}:{h}"


def worker_id() -> str:
    return f"{platform.node()}:{os.getpid()}"


@dataclass
class Queue:
    study: object  # optuna.Study
    keys: list[str]
    heartbeat: int
    grace: int = 60
    url: str = ""
    on_stale: Callable | None = None  # (study, frozen trial): close its run, retry its cell

    @contextlib.contextmanager
    def lock(self):
        """Serialise a read-then-write of the queue between the processes of this machine (a
        sqlite queue; a server's queue is left to its row locks)."""
        db = sqlite_path(self.url)
        with file_lock(db) if db is not None else contextlib.nullcontext():
            yield


def open_queue(spec: Spec, cells: list[Cell], storage_url: str, tracking_uri: str | None, *,
               heartbeat: int = 20, grace: int = 60) -> Queue:
    """The spec's study in ``storage_url`` (created by the first process, loaded by the others).

    ``heartbeat`` seconds between a running trial's heartbeats; a trial silent for ``grace``
    seconds is taken as dead and retried."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from negbench.harness.console import UserError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the grid's "re-evaluating" notes
    _quiet_optuna()
    if grace <= heartbeat:
        raise UserError(f"the grace period ({grace} s) must exceed the heartbeat "
                        f"({heartbeat} s)")
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def on_stale(study, trial) -> None:  # a dead worker's cell: close its mlflow run, retry it
        ref = _trial_ref(study, trial)
        with contextlib.suppress(Exception):  # the run may be in a store we cannot reach
            close_runs(tracking_uri, spec.name, lambda tags: tags.get(TRIAL_TAG) == ref,
                       "the worker running it stopped responding")
        retry(study, trial)

    storage = open_optuna(storage_url, heartbeat=heartbeat, grace=grace, on_stale=on_stale,
                          label="the work-queue storage")
    keys = [c.key for c in cells]
    study = optuna.create_study(
        study_name=study_name(spec, cells), storage=storage, load_if_exists=True,
        direction="maximize", sampler=_GridQueue({PARAM: keys}, seed=0))
    study.set_user_attr("spec", spec.name)
    return Queue(study, keys, heartbeat, grace, storage_url, on_stale)


def _quiet_optuna() -> None:
    """optuna warns that heartbeats are meant for ``Study.optimize`` and that
    ``fail_stale_trials`` is experimental: this module beats for its trials itself."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def _grid_queue_class():
    import optuna

    class GridQueue(optuna.samplers.GridSampler):
        """optuna's grid sampler, less its ``study.stop()`` when the grid is exhausted: the
        worker's loop (not an ``optimize`` call) decides when the work is done."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridQueue


def _GridQueue(search_space, seed):  # noqa: N802 - a class made on first use (optuna is lazy)
    return _grid_queue_class()(search_space, seed=seed)


def _trial_ref(study, trial) -> str:
    """The TRIAL_TAG value of the mlflow run a trial runs."""
    return f"{study.study_name}#{trial.number}"


def _cell_of(trial) -> str | None:
    """The cell a trial is for: its sampled parameter, or an enqueued trial's fixed one."""
    return trial.params.get(PARAM, trial.system_attrs.get("fixed_params", {}).get(PARAM))


def _state_of_cells(queue: Queue) -> dict[str, str]:
    """Cell key -> the state of its latest trial (duplicates, ended PRUNED, left out): a cell
    queued again after it failed or went missing is WAITING, whatever came before."""
    from optuna.trial import TrialState

    latest: dict[str, tuple[int, str]] = {}
    for t in queue.study.get_trials(deepcopy=False):
        key = _cell_of(t)
        if key is None or t.state == TrialState.PRUNED:
            continue
        if t.number > latest.get(key, (-1, ""))[0]:
            latest[key] = (t.number, t.state.name)
    return {k: v[1] for k, v in latest.items()}


def requeue(queue: Queue, done: set[str]) -> tuple[int, int]:
    """Queue again the cells whose latest trial failed (a new run of the spec retries its failed
    cells), and those the queue has as done but the tracking store does not (``done``: the keys
    of its FINISHED runs; a deleted run or a new store); (how many failed, how many missing).
    Processes of one machine do this one at a time, so a cell is queued again once."""
    with queue.lock():
        states = _state_of_cells(queue)
        failed = [k for k in queue.keys if states.get(k) == "FAIL"]
        lost = [k for k in queue.keys if states.get(k) == "COMPLETE" and k not in done]
        for k in failed + lost:
            queue.study.enqueue_trial({PARAM: k}, skip_if_exists=False)
    return len(failed), len(lost)


def retry_failed(queue: Queue) -> int:
    """Queue again the cells whose latest trial failed; how many."""
    states = _state_of_cells(queue)
    return requeue(queue, {k for k, s in states.items() if s == "COMPLETE"})[0]


def reap(queue: Queue) -> int:
    """Fail, and retry, the running trials whose process is known dead now: one that died on
    this machine (its process token), or, on a sqlite queue (one machine, one clock), one that
    never got to record who runs it within the grace period (killed inside ``ask``); how many.
    Those on other machines are left to their heartbeats."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = queue.study._storage
    local = sqlite_path(queue.url) is not None
    now = datetime.now()
    n = 0
    for t in queue.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        token = t.user_attrs.get(ATTR_PROCESS)
        if token:
            dead = token_alive(token) is False
        else:
            dead = (local and ATTR_WORKER not in t.user_attrs and t.datetime_start is not None
                    and (now - t.datetime_start).total_seconds() > queue.grace)
        if not dead:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another process reaped it first
            continue
        if queue.on_stale is not None:
            queue.on_stale(queue.study, storage.get_trial(t._trial_id))
        n += 1
    return n


def _duplicate_of(queue: Queue, number: int, key: str) -> int | None:
    """The number of an earlier trial that is running ``key``, if any (one that has completed
    it is not: the tracking store says whether the cell is done).

    An earlier trial still without its cell (asked a moment ago by another worker: optuna
    creates the trial, then samples) is waited for, briefly, so the two cannot both run."""
    from optuna.trial import TrialState

    for _ in range(50):
        unsampled = False
        for t in queue.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number >= number:
                continue
            if _cell_of(t) == key:
                return t.number
            unsampled |= _cell_of(t) is None
        if not unsampled:
            return None
        time.sleep(0.1)
    return None


def _left(queue: Queue) -> tuple[int, int, int]:
    """(cells not started, cells running, cells done or failed)."""
    states = _state_of_cells(queue)
    todo = sum(states.get(k) in (None, "WAITING") for k in queue.keys)
    running = sum(states.get(k) == "RUNNING" for k in queue.keys)
    return todo, running, len(queue.keys) - todo - running


class _Heartbeat:
    """Records a trial's heartbeat now, then every ``interval`` seconds from a thread, until
    stopped."""

    def __init__(self, storage, trial_id: int, interval: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: int) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(Exception):  # a lost connection: the next beat tries again
                self._storage.record_heartbeat(self._trial_id)

    def __enter__(self):
        # the first beat before anything else: optuna never takes a trial without one as dead
        with contextlib.suppress(Exception):
            self._storage.record_heartbeat(self._trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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


def work(spec: Spec, cells: list[Cell], queue: Queue, *, tracking_uri: str | None,
         data_dir: str | None = None, poll: float = 5.0, max_cells: int | None = None,
         on_event: Callable[[str, Cell | None, dict], None] | None = None) -> int:
    """Take cells from the queue and run them until none is left to start and none is held by
    another worker (or ``max_cells`` ran); how many cells this worker ran."""
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    by_key = {c.key: c for c in cells}
    study = queue.study
    me, token = worker_id(), process_token()
    ran = 0

    def emit(kind: str, cell: Cell | None, **info) -> None:
        if on_event is not None:
            on_event(kind, cell, info)

    while max_cells is None or ran < max_cells:
        fail_stale_trials(study)
        reap(queue)
        todo, running, finished = _left(queue)
        emit("queue", None, todo=todo, running=running, finished=finished)
        if todo == 0:
            if running == 0:
                break
            time.sleep(poll)  # others hold the last cells: stay to retry them if they die
            continue
        trial = study.ask({PARAM: CategoricalDistribution(queue.keys)})  # samples inside ask
        with _Heartbeat(study._storage, trial._trial_id, queue.heartbeat):
            try:
                trial.set_user_attr(ATTR_WORKER, me)
                trial.set_user_attr(ATTR_PROCESS, token)
                metrics, reason = _take(spec, trial, by_key[trial.params[PARAM]], queue,
                                        tracking_uri, data_dir, emit, me, token)
            except BaseException:  # interrupted: hand the cell back now, not after the grace
                _hand_back(study, trial)
                raise
        if metrics is None and reason is None:  # a duplicate, or done already: nothing ran
            continue
        if metrics is None:
            trial.set_user_attr("failure", reason[:4000])
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, _queue_value(metrics))
        ran += 1
    return ran


def _queue_value(metrics: dict[str, float]) -> float:
    """The value a done cell's trial keeps (bookkeeping: nothing reads it): its kNN accuracy,
    or 0 for a run without one (a suite without labels), since optuna fails a trial told NaN
    and the queue would then show a done cell as failed."""
    v = metrics.get("knn_acc", math.nan)
    return v if math.isfinite(v) else 0.0


def _take(spec: Spec, trial, cell: Cell, queue: Queue, tracking_uri: str | None,
          data_dir: str | None, emit, me: str, token: str
          ) -> tuple[dict[str, float] | None, str | None]:
    """Run the cell ``trial`` was given, unless another trial runs it (the trial ends PRUNED)
    or the tracking store has it done (COMPLETE): then (None, None)."""
    from optuna.trial import TrialState

    study = queue.study
    dup = _duplicate_of(queue, trial.number, cell.key)
    if dup is not None:
        trial.set_user_attr("duplicate_of", dup)
        study.tell(trial, state=TrialState.PRUNED)
        return None, None
    done = completed(tracking_uri, spec.name).get(cell.key)
    if done is not None:  # done by an earlier queue, or by another process just now
        trial.set_user_attr("skipped", "completed in the tracking store")
        study.tell(trial, _queue_value(done.data.metrics))
        emit("skipped", cell)
        return None, None
    tags = {WORKER_TAG: me, TRIAL_TAG: _trial_ref(study, trial), PROCESS_TAG: token}
    return run_cell(spec, cell, tracking_uri=tracking_uri, data_dir=data_dir, emit=emit,
                    tags=tags)


def _hand_back(study, trial) -> None:
    """End an interrupted trial and enqueue its retry at once."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    try:
        study.tell(trial, state=TrialState.FAIL)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        retry(study, study._storage.get_trial(trial._trial_id))
    except Exception:  # noqa: BLE001 - the storage is gone too: the heartbeat timeout will do it
        pass


__all__ = ["MAX_RETRY", "PARAM", "PROCESS_TAG", "Queue", "SPEC_TAG", "TRIAL_TAG", "WORKER_TAG",
           "open_queue", "reap", "requeue", "retry_failed",
           "run_cell", "study_name", "work", "worker_id"]
