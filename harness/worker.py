"""An ablation's work queue in optuna's RDB storage, shared by ``negbench worker`` processes on
any number of machines.

The queue is an optuna study (name ``negbench-ablate:<spec name>:<grid hash>``) with a
:class:`optuna.samplers.GridSampler` over the spec's cell keys. optuna hands out the work:

- the first N trials of a grid of N cells are mapped to distinct grid points by their trial
  number, which the storage assigns atomically, so workers starting together never take the
  same cell;
- a worker killed mid-cell stops its heartbeat; after the grace period, the next worker that
  checks marks that trial FAIL and enqueues a retry (optuna's ``RetryHeartbeatStaleTrialCallback``),
  which ``ask()`` hands to exactly one worker (a WAITING trial is claimed under a row lock);
- a trial that optuna hands out for a cell another trial already holds (the sampler's fallback
  once the grid is exhausted, or two retries of one cell) is ended PRUNED as a duplicate,
  without running anything.

The tracking store stays the record of what is done: a cell whose FINISHED run is already there
(from ``negbench ablate`` or an earlier worker) is closed without running again. A cell whose run
fails is recorded FAILED with its reason in mlflow and its trial ends FAIL; a worker started
later tries it again, as ``negbench ablate`` does. A worker leaves when no cell is left to start
and waits while other workers still hold cells, so it can retry theirs if they die.

Storage: any SQLAlchemy URL optuna accepts. PostgreSQL (``postgresql+psycopg2://...``, the
``team`` extra brings the driver) for many machines; a sqlite file serves processes on one
machine.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from negbench.harness.spec import Cell, Spec

PARAM = "cell"
MAX_RETRY = 3  # how often a dead or interrupted worker's cell is handed out again
TRIAL_TAG = "negbench.trial"
WORKER_TAG = "negbench.worker"


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


def open_queue(spec: Spec, cells: list[Cell], storage_url: str, tracking_uri: str | None, *,
               heartbeat: int = 20, grace: int = 60) -> Queue:
    """The spec's study in ``storage_url`` (created by the first worker, loaded by the others).

    ``heartbeat`` seconds between a running trial's heartbeats; a trial silent for ``grace``
    seconds is taken as dead and retried."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_optuna()
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if grace <= heartbeat:
        raise ValueError(f"the grace period ({grace} s) must exceed the heartbeat ({heartbeat} s)")
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def on_stale(study, trial) -> None:  # a dead worker's cell: close its mlflow run, retry it
        from negbench.harness.ablate import close_runs

        ref = _trial_ref(study, trial)
        close_runs(tracking_uri, spec.name, lambda tags: tags.get(TRIAL_TAG) == ref,
                   "the worker running it stopped responding")
        retry(study, trial)

    storage = _storage(storage_url, heartbeat, grace, on_stale)
    keys = [c.key for c in cells]
    study = optuna.create_study(
        study_name=study_name(spec, cells), storage=storage, load_if_exists=True,
        direction="maximize", sampler=_GridQueue({PARAM: keys}, seed=0))
    study.set_user_attr("spec", spec.name)
    return Queue(study, keys, heartbeat)


def _storage(url: str, heartbeat: int, grace: int, on_stale):
    """optuna's RDB storage at ``url``. Workers started together on an empty database race to
    create optuna's tables; the losers' duplicate-table errors are retried after a pause."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(6):
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                              heartbeat_stale_trial_callback=on_stale)
        except (IntegrityError, ProgrammingError) as e:
            if attempt == 5:
                raise ValueError(f"cannot create the work queue's tables in {url!r}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
            time.sleep(0.5 + attempt)
        except Exception as e:  # noqa: BLE001 - a bad URL, an unreachable server, no driver
            raise ValueError(f"cannot open the work-queue storage {url!r}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    raise AssertionError("unreachable")


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
    """Cell key -> the most advanced state of its trials: COMPLETE > RUNNING > WAITING > FAIL."""
    from optuna.trial import TrialState

    rank = {TrialState.COMPLETE: 4, TrialState.RUNNING: 3, TrialState.WAITING: 2,
            TrialState.FAIL: 1}
    best: dict[str, tuple[int, str]] = {}
    for t in queue.study.get_trials(deepcopy=False):
        key = _cell_of(t)
        if key is None or t.state not in rank:
            continue
        r = rank[t.state]
        if r > best.get(key, (0, ""))[0]:
            best[key] = (r, t.state.name)
    return {k: v[1] for k, v in best.items()}


def retry_failed(queue: Queue) -> int:
    """Enqueue again the cells whose trials all failed (as a rerun of ``ablate`` retries its
    failed cells); how many."""
    states = _state_of_cells(queue)
    again = [k for k in queue.keys if states.get(k) == "FAIL"]
    for k in again:
        queue.study.enqueue_trial({PARAM: k}, skip_if_exists=False)
    return len(again)


def _duplicate_of(queue: Queue, number: int, key: str) -> int | None:
    """The number of an earlier trial that holds or has done ``key``, if any.

    An earlier trial still without its cell (asked a moment ago by another worker: optuna
    creates the trial, then samples) is waited for, briefly, so the two cannot both run."""
    from optuna.trial import TrialState

    for _ in range(50):
        unsampled = False
        for t in queue.study.get_trials(deepcopy=False,
                                        states=(TrialState.RUNNING, TrialState.COMPLETE)):
            if t.number >= number:
                continue
            if t.params.get(PARAM) == key:
                return t.number
            unsampled |= PARAM not in t.params and t.state == TrialState.RUNNING
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
    """Records a trial's heartbeat every ``interval`` seconds from a thread, until stopped."""

    def __init__(self, storage, trial_id: int, interval: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval),
                                        daemon=True)

    def _beat(self, storage, trial_id: int, interval: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a lost connection: the next beat tries again
                pass
            if self._stop.wait(interval):
                return

    def __enter__(self):
        self._thread.start()  # its first beat now: optuna never takes a trial without one as dead
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def work(spec: Spec, cells: list[Cell], queue: Queue, *, tracking_uri: str | None,
         data_dir: str | None = None, poll: float = 5.0, max_cells: int | None = None,
         on_event: Callable[[str, Cell | None, dict], None] | None = None) -> int:
    """Take cells from the queue and run them until none is left to start and none is held by
    another worker (or ``max_cells`` ran); how many cells this worker ran."""
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    from negbench.harness.ablate import completed, run_cell

    by_key = {c.key: c for c in cells}
    study = queue.study
    me = worker_id()
    ran = 0

    def emit(kind: str, cell: Cell | None, **info) -> None:
        if on_event is not None:
            on_event(kind, cell, info)

    while max_cells is None or ran < max_cells:
        fail_stale_trials(study)
        todo, running, finished = _left(queue)
        emit("queue", None, todo=todo, running=running, finished=finished)
        if todo == 0:
            if running == 0:
                break
            time.sleep(poll)  # others hold the last cells: stay to retry them if they die
            continue
        trial = study.ask({PARAM: CategoricalDistribution(queue.keys)})  # samples inside ask
        key = trial.params[PARAM]
        cell = by_key[key]
        dup = _duplicate_of(queue, trial.number, key)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        trial.set_user_attr("worker", me)
        done = completed(tracking_uri, spec.name).get(key)
        if done is not None:  # done before this queue existed (ablate, an earlier grid)
            trial.set_user_attr("skipped", "completed in the tracking store")
            study.tell(trial, done.data.metrics.get("knn_acc", math.nan))
            emit("skipped", cell)
            continue
        tags = {WORKER_TAG: me, TRIAL_TAG: _trial_ref(study, trial)}
        with _Heartbeat(study._storage, trial._trial_id, queue.heartbeat):
            try:
                metrics, reason = run_cell(spec, cell, tracking_uri=tracking_uri,
                                           data_dir=data_dir, emit=emit, tags=tags)
            except BaseException:  # interrupted: hand the cell back now, not after the grace
                _hand_back(study, trial)
                raise
        if metrics is None:
            trial.set_user_attr("failure", reason[:4000])
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, metrics.get("knn_acc", math.nan))
        ran += 1
    return ran


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
