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
    they count neither in a run's ``wall_seconds`` nor against a ``seconds`` budget.

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
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from negbench.harness.cli import add_tracking_uri
from negbench.harness.config import BudgetConfig, ConfigError, RunConfig, build_config
from negbench.strategies.base import Choice, Float, Int

DEFAULT_PREFIX = "tune"
DEFAULT_EXPERIMENT = "tune"
DEFAULT_STORAGE_DIR = Path("negbench-runs")
DEFAULT_CHECKPOINTS = (0.25, 0.5, 0.75)
PRUNERS = ("median", "hyperband", "none")
DEFAULT_PRUNE_AFTER = 3
DEFAULT_HEARTBEAT = 10  # seconds; a trial silent for GRACE_BEATS heartbeats is interrupted
GRACE_BEATS = 3
POLL_SECONDS = 2.0

# (factor below, factor above) the value a run would use, log-uniform
NUISANCE = {
    "optim.lr": (20.0, 20.0),
    "optim.weight_decay": (100.0, 100.0),
    "objective.temperature": (5.0, 5.0),  # InfoNCE
    "objective.margin": (5.0, 4.0),  # triplet
}

ATTR_DEFAULT = "negbench.default"
ATTR_FAILURE = "negbench.failure"
ATTR_SURPLUS = "negbench.surplus"
ATTR_RUN = "mlflow.run_id"
ATTR_SETTINGS = "negbench.settings"
TAG_ROLE = "negbench.role"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_PRUNED = "pruned"
TAG_DEFAULT = "negbench.default"
INTERMEDIATE = "val_knn_acc"

Dist = Float | Int | Choice


# --------------------------------------------------------------------------- search space
def study_name(prefix: str, suite: str, strategy: str) -> str:
    return f"{prefix}:{suite}:{strategy}"


def search_space(cfg: RunConfig, fixed: Sequence[str] = ()) -> dict[str, Dist]:
    """Dotted run key -> its range: the shared nuisance parameters around ``cfg``'s values, then
    the strategy's declared space; keys in ``fixed`` (set by the user) are left out."""
    flat = cfg.flat()
    space: dict[str, Dist] = {}
    keys = ["optim.lr", "optim.weight_decay",
            "objective.temperature" if cfg.objective.name == "infonce" else "objective.margin"]
    for key in keys:
        v = float(flat[key])
        if v <= 0:  # no log range around 0 (a weight decay of 0): not searched
            continue
        below, above = NUISANCE[key]
        space[key] = Float(v / below, v * above, log=True)
    for knob, dist in type(cfg.strategy_cfg).space.items():
        space[f"strategy.{knob}"] = dist
    return {k: d for k, d in space.items() if k not in set(fixed)}


def describe(dist: Dist) -> str:
    if isinstance(dist, Choice):
        return "one of " + ", ".join(map(str, dist.options))
    kind = "float" if isinstance(dist, Float) else "int"
    return f"{kind} in [{dist.low:g}, {dist.high:g}]{' log' if dist.log else ''}"


def inside(value: Any, dist: Dist) -> bool:
    if isinstance(dist, Choice):
        return value in dist.options
    if isinstance(dist, Int) and (isinstance(value, bool) or value != int(value)):
        return False
    return dist.low <= value <= dist.high


def default_params(cfg: RunConfig, space: dict[str, Dist]) -> dict[str, Any]:
    """The values ``cfg`` gives the searched keys: the parameters of the default trial."""
    flat = cfg.flat()
    out = {}
    for key, dist in space.items():
        v = flat[key]
        if not inside(v, dist):
            raise ConfigError(f"{key}: the default {v!r} of {cfg.strategy} lies outside its "
                              f"search space ({describe(dist)}); the default trial needs it "
                              "inside (fix the strategy's Config.space)")
        out[key] = v
    return out


def suggest(trial, key: str, dist: Dist) -> Any:
    if isinstance(dist, Choice):
        return trial.suggest_categorical(key, list(dist.options))
    if isinstance(dist, Int):
        return trial.suggest_int(key, int(dist.low), int(dist.high), log=dist.log)
    return trial.suggest_float(key, float(dist.low), float(dist.high), log=dist.log)


def _text(v: Any) -> str:
    """A value as ``--set`` takes it (repr keeps a float's every digit)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- storage
def default_storage() -> str:
    return f"sqlite:///{(DEFAULT_STORAGE_DIR / 'optuna.db').resolve()}"


def shown_url(url: str) -> str:
    """The storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy reads: shown as given
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT, create: bool = True):
    """optuna's RDB storage at ``url`` with heartbeats; a sqlite file's directory is created
    (``create``) or must exist."""
    import optuna

    db = _sqlite_path(url)
    if db is not None:
        if not create and not db.is_file():
            raise ConfigError(f"--storage {url}: no such optuna database (tune something first, "
                              "or name the storage it used)")
        db.parent.mkdir(parents=True, exist_ok=True)
    elif not re.match(r"^[a-z][a-z0-9+]*://", url):
        raise ConfigError(f"--storage {url!r} is not a database URL; allowed: "
                          "sqlite:///PATH or an RDB URL such as postgresql://USER@HOST/DB")
    kwargs: dict[str, Any] = {}
    if db is not None:  # several local processes share the file: wait for its lock
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                              heartbeat_interval=heartbeat,
                                              grace_period=GRACE_BEATS * heartbeat)
        except ImportError as e:
            raise ConfigError(f"--storage {shown_url(url)}: its database driver is not "
                              f"installed ({e}); for PostgreSQL install the team extra: "
                              "pip install -e '.[team]'") from None
        except Exception as e:  # noqa: BLE001 - sqlalchemy's many connection errors
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"--storage {shown_url(url)}: cannot open it "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _quiet() -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- trial accounting
def counts(t) -> bool:
    """Does trial ``t`` count toward the study's T? Completed, pruned, failed with a reason."""
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and ATTR_FAILURE in t.user_attrs


def claims(t) -> bool:
    """Does ``t`` hold one of the T places: it counts, or is running or waiting to run."""
    from optuna.trial import TrialState

    return counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)


@dataclass
class Tally:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    interrupted: int = 0
    surplus: int = 0  # asked for by a concurrent worker after the T-th: ended at once, unrun

    @property
    def counted(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def claimed(self) -> int:
        return self.counted + self.running + self.waiting


def tally(trials) -> Tally:
    from optuna.trial import TrialState

    out = Tally()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out.complete += 1
        elif t.state == TrialState.PRUNED:
            out.pruned += 1
        elif t.state == TrialState.RUNNING:
            out.running += 1
        elif t.state == TrialState.WAITING:
            out.waiting += 1
        elif counts(t):
            out.failed += 1
        elif t.user_attrs.get(ATTR_SURPLUS):
            out.surplus += 1
        else:
            out.interrupted += 1
    return out


# --------------------------------------------------------------------------- the job
@dataclass
class Job:
    """What one ``negbench tune`` invocation asks for (the CLI's options, as data)."""

    suites: tuple[str, ...]
    strategies: tuple[str, ...]
    trials: int
    budget: BudgetConfig | None = None
    sets: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    pruner: str = "median"
    prune_after: int = DEFAULT_PRUNE_AFTER
    checkpoints: tuple[float, ...] = DEFAULT_CHECKPOINTS
    storage: str = ""
    prefix: str = DEFAULT_PREFIX
    experiment: str = DEFAULT_EXPERIMENT
    tracking_uri: str | None = None
    data_dir: str | None = None
    heartbeat: int = DEFAULT_HEARTBEAT
    # parameter dicts enqueued after the default trial when a study is created (the Python API:
    # e.g. a deliberately bad region, to see it pruned)
    enqueue: tuple[dict[str, Any], ...] = ()

    def __post_init__(self):
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1; got {self.trials}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got "
                              f"{self.pruner!r}")
        if self.prune_after < 1:
            raise ConfigError(f"--prune-after must be >= 1; got {self.prune_after}")
        if self.heartbeat < 1:
            raise ConfigError(f"--heartbeat must be a whole number of seconds >= 1; got "
                              f"{self.heartbeat}")
        if not self.prefix or ":" in self.prefix:
            raise ConfigError(f"--study must be a non-empty name without ':'; got "
                              f"{self.prefix!r}")
        cps = tuple(self.checkpoints)
        if not cps or any(not 0 < c < 1 for c in cps) or list(cps) != sorted(set(cps)):
            raise ConfigError(f"--checkpoints must be increasing fractions in (0, 1), e.g. "
                              f"0.25,0.5,0.75; got {','.join(map(str, cps))}")
        if len({round(100 * c) for c in cps}) != len(cps) or any(round(100 * c) in (0, 100)
                                                                   for c in cps):
            raise ConfigError("--checkpoints must lie at least 1% of the budget apart, "
                              "between 1% and 99%")
        split = self.sets.get("eval.split", "val")
        if split != "val":
            raise ConfigError(f"eval.split={split}: tuning evaluates on the validation split "
                              "only (allowed: val)")
        self.storage = self.storage or default_storage()


@dataclass
class TrialEnd:
    study: str
    number: int
    state: str  # complete | pruned | failed | interrupted | surplus
    value: float | None = None
    reason: str = ""


class _TrialFailed(Exception):
    """The trial's run failed by itself: counted, with its reason."""


class _Surplus(Exception):
    """The study already had its T trials when this one was asked for (a concurrent worker)."""


class StudyWork:
    """One (suite, strategy) study: its base config, search space, optuna study and mlflow
    parent run, and how to run one more trial of it."""

    def __init__(self, job: Job, suite: str, strategy: str, storage, create: bool):
        import optuna

        from negbench import suites as suite_registry

        self.job, self.suite, self.strategy = job, suite, strategy
        self.name = study_name(job.prefix, suite, strategy)
        sets = {**job.sets, "eval.split": "val"}
        self.base = build_config(suite, strategy, seed=job.seed, budget=job.budget, sets=sets)
        suite_registry.create(suite, self.base.suite_cfg, data_dir=job.data_dir).locate()
        self.space = search_space(self.base, fixed=list(job.sets))
        self.defaults = default_params(self.base, self.space)
        self.settings = {
            "suite": suite, "strategy": strategy, "seed": job.seed,
            "budget": f"{self.base.budget.kind}={self.base.budget.amount:g}",
            # the device is where a trial runs, not what it means: machines may differ
            "sets": {k: v for k, v in sorted(job.sets.items()) if k != "device"},
            "checkpoints": list(job.checkpoints), "pruner": self._pruner_text(),
            "space": {k: describe(d) for k, d in self.space.items()},
        }
        direction = optuna.study.StudyDirection.MAXIMIZE
        if create:
            self.study = optuna.create_study(storage=storage, study_name=self.name,
                                             direction="maximize", load_if_exists=True,
                                             pruner=self._pruner())
        else:
            try:
                self.study = optuna.load_study(study_name=self.name, storage=storage,
                                               pruner=self._pruner())
            except KeyError:
                raise ConfigError(f"study {self.name!r} does not exist in "
                                  f"{shown_url(job.storage)}") from None
        if self.study.direction != direction:
            raise ConfigError(f"study {self.name!r} in {shown_url(job.storage)} is not a "
                              "maximisation; use another --study prefix")
        stored = self.study.user_attrs.get(ATTR_SETTINGS)
        if stored is None:
            self.study.set_user_attr(ATTR_SETTINGS, self.settings)
            if not self.study.get_trials(deepcopy=False):
                self.study.enqueue_trial(self.defaults, user_attrs={ATTR_DEFAULT: True})
                for params in job.enqueue:
                    self.study.enqueue_trial(params)
        elif stored != json.loads(json.dumps(self.settings)):
            diff = [k for k in self.settings
                    if json.loads(json.dumps(self.settings[k])) != stored.get(k)]
            k = diff[0] if diff else "settings"
            raise ConfigError(f"study {self.name!r} in {shown_url(job.storage)} was created with "
                              f"{k} = {stored.get(k)!r}, not {self.settings.get(k)!r}; resume "
                              f"it with the same settings, or tune under another --study prefix")
        self._closed: set[int] = set()
        self.parent_id: str | None = None

    # -- optuna pieces
    def _pruner_text(self) -> str:
        j = self.job
        if j.pruner == "median":
            return f"median(after {j.prune_after} completed)"
        if j.pruner == "hyperband":
            return f"hyperband(min {round(100 * j.checkpoints[0])}%, max 100%, factor 3)"
        return "none"

    def _pruner(self):
        import optuna

        j = self.job
        if j.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=j.prune_after,
                                               n_warmup_steps=0)
        if j.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=round(100 * j.checkpoints[0]),
                                                  max_resource=100, reduction_factor=3)
        return optuna.pruners.NopPruner()

    def _sampler(self, number: int) -> Any:
        """TPE seeded for trial ``number`` of this study (trial numbers are unique in a study,
        whichever process asks)."""
        import optuna

        seed = zlib.crc32(f"{self.job.seed}:{number}".encode())
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def trials(self):
        return self.study.get_trials(deepcopy=False)

    # -- housekeeping: stale trials, their mlflow runs, the default trial
    def poll(self) -> Tally:
        """Fail trials whose process died, close their mlflow runs, put the default trial back
        if it was lost; the study's tally."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        trials = self.trials()
        from optuna.trial import TrialState

        client = None
        for t in trials:
            if t.number in self._closed or t.state != TrialState.FAIL or counts(t):
                continue
            self._closed.add(t.number)
            run_id = t.user_attrs.get(ATTR_RUN)
            if run_id is None:
                continue
            client = client or _client(self.job.tracking_uri)
            try:
                r = client.get_run(run_id)
            except Exception:  # noqa: BLE001 - its run is in another tracking store
                continue
            if r.info.status == "RUNNING":
                client.set_tag(run_id, "failure", "interrupted: the process running this trial "
                                                  "stopped before it ended")
                client.set_terminated(run_id, status="KILLED")
        n = tally(trials)
        has_default = any(t.user_attrs.get(ATTR_DEFAULT) and claims(t) for t in trials)
        if not has_default and n.claimed < self.job.trials:
            self.study.enqueue_trial(self.defaults, user_attrs={ATTR_DEFAULT: True})
            n.waiting += 1
        return n

    # -- mlflow parent run
    def _find_parent(self, tracker):
        found = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{self.name}'",
            max_results=1, order_by=["attributes.start_time ASC"])
        return found[0] if found else None

    def parent(self) -> str:
        """The study's mlflow parent run (found by its tags, else created), RUNNING: this
        process is about to run trials under it."""
        if self.parent_id is not None:
            return self.parent_id
        from negbench.harness.tracking import Tracker, command_line

        tracker = Tracker(self.job.tracking_uri, self.job.experiment)
        client = tracker.client
        found = self._find_parent(tracker)
        tags = {"trials": str(self.job.trials), "storage": shown_url(self.job.storage)}
        if found is not None:
            self.parent_id = found.info.run_id
            if found.info.status != "RUNNING":
                client.update_run(self.parent_id, status="RUNNING")
            tracker.run_id = self.parent_id
            tracker.set_tags(tags)
        else:
            params = {k: v for k, v in self.settings.items() if k not in ("space", "sets")}
            params.update({f"set.{k}": v for k, v in self.settings["sets"].items()})
            params.update({f"space.{k}": v for k, v in self.settings["space"].items()})
            params["checkpoints"] = ",".join(map(str, self.settings["checkpoints"]))
            self.parent_id = tracker.start(self.name, params, {
                TAG_ROLE: "study", TAG_STUDY: self.name, "suite": self.suite,
                "strategy": self.strategy, "negbench.command": command_line(), **tags})
        return self.parent_id

    def close_parent(self) -> None:
        """Log the study's summary on its parent run and end it FINISHED (once it has its T
        trials); nothing when it is already ended."""
        from negbench.harness.tracking import Tracker

        tracker = Tracker(self.job.tracking_uri, self.job.experiment)
        found = self._find_parent(tracker)
        if found is None or found.info.status != "RUNNING":
            return
        client, pid = tracker.client, found.info.run_id
        s = summarize(self.study)
        metrics = {"trials_complete": s.tally.complete, "trials_pruned": s.tally.pruned,
                   "trials_failed": s.tally.failed, "trial_seconds": s.seconds}
        for k, v in (("default_val_knn_acc", s.default), ("best_val_knn_acc", s.best),
                     ("gain", s.gain)):
            if v is not None:
                metrics[k] = v
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        client.log_batch(pid, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
        if s.best_trial is not None:
            client.set_tag(pid, "best_trial", str(s.best_trial))
        client.set_terminated(pid, status="FINISHED")
        self.parent_id = None

    # -- one trial
    def run_one(self, on_event: Callable[[dict], None]) -> TrialEnd:
        """Ask the study for one trial and run it; how it ended."""
        import optuna

        trials = self.trials()
        n = tally(trials)
        if not n.waiting and n.claimed >= self.job.trials:  # taken meanwhile by another worker
            return TrialEnd(self.name, -1, "surplus")
        self.study.sampler = self._sampler(len(trials))  # reseeded by the objective
        ended: list[TrialEnd] = []
        parent = self.parent()

        def objective(trial) -> float:
            return self._objective(trial, parent, on_event, ended)

        self.study.optimize(objective, n_trials=1, catch=(_TrialFailed, _Surplus),
                            gc_after_trial=False, show_progress_bar=False)
        end = ended[-1] if ended else TrialEnd(self.name, -1, "interrupted")
        last = self.study.get_trials(deepcopy=False)
        mine = [t for t in last if t.number == end.number]
        if mine and mine[0].state == optuna.trial.TrialState.COMPLETE:
            self._log_progress(parent, last, mine[0])
        on_event({"event": "end", "study": self.name, "trial": end.number, "state": end.state,
                  "value": end.value, "reason": end.reason})
        return end

    def _log_progress(self, parent: str, trials, t) -> None:
        from mlflow.entities import Metric
        from optuna.trial import TrialState

        done = [x.value for x in trials
                if x.state == TrialState.COMPLETE and x.number <= t.number]
        ts = int(time.time() * 1000)
        _client(self.job.tracking_uri).log_batch(parent, metrics=[
            Metric("trial_val_knn_acc", float(t.value), ts, t.number),
            Metric("best_val_knn_acc", float(max(done)), ts, t.number)])

    def _objective(self, trial, parent: str, on_event, ended: list[TrialEnd]) -> float:
        import optuna

        from negbench.harness.runner import RunFailed, RunStopped, run
        from negbench.strategies import StrategyError

        n = trial.number
        rank = sum(1 for t in self.trials() if t.number < n and claims(t))
        if rank >= self.job.trials:
            trial.set_user_attr(ATTR_SURPLUS, True)
            ended.append(TrialEnd(self.name, n, "surplus"))
            raise _Surplus(f"the study already has its {self.job.trials} trials")
        # the trial's number is known only now: the sampler draws its values from this seed
        self.study.sampler = self._sampler(n)
        params = {k: suggest(trial, k, d) for k, d in self.space.items()}
        is_default = bool(trial.user_attrs.get(ATTR_DEFAULT))
        on_event({"event": "start", "study": self.name, "trial": n, "default": is_default})
        tags = {"mlflow.parentRunId": parent, TAG_STUDY: self.name, TAG_TRIAL: str(n),
                TAG_PRUNED: "false", TAG_DEFAULT: str(is_default).lower()}
        run_name = f"{self.suite}/{self.strategy}/trial {n}"

        def fail(reason: str) -> _TrialFailed:
            trial.set_user_attr(ATTR_FAILURE, reason[:2000])
            ended.append(TrialEnd(self.name, n, "failed", reason=reason))
            return _TrialFailed(reason)

        sets = {**self.job.sets, "eval.split": "val", **{k: _text(v) for k, v in params.items()}}
        try:
            cfg = build_config(self.suite, self.strategy, seed=self.job.seed,
                               budget=self.job.budget, sets=sets)
        except ConfigError as e:  # a combination the strategy rejects: a run that never started
            self._failed_run(run_name, params, tags, str(e), trial)
            raise fail(f"ConfigError: {e}") from None

        def on_log(point):
            on_event({"event": "progress", "study": self.name, "trial": n,
                      "fraction": point["budget_fraction"], "loss": point["loss"]})

        def on_checkpoint(tr, fraction: float):
            value = tr.knn_accuracy(tr.cfg.eval.split)
            step = round(100 * fraction)
            trial.report(value, step)
            on_event({"event": "checkpoint", "study": self.name, "trial": n,
                      "fraction": fraction, "value": value})
            point = {INTERMEDIATE: value}
            if not is_default and trial.should_prune():
                raise RunStopped(f"pruned at {step}% of the budget (val kNN {value:.4f})",
                                 tags={TAG_PRUNED: "true"}, metrics=point)
            return point

        try:
            r = run(cfg, tracking_uri=self.job.tracking_uri, experiment=self.job.experiment,
                    data_dir=self.job.data_dir, on_log=on_log, extra_tags=tags,
                    run_name=run_name, checkpoints=self.job.checkpoints,
                    on_checkpoint=on_checkpoint,
                    on_tracked=lambda rid: trial.set_user_attr(ATTR_RUN, rid))
        except RunStopped as e:
            ended.append(TrialEnd(self.name, n, "pruned", reason=str(e)))
            raise optuna.TrialPruned(str(e)) from None
        except (RunFailed, StrategyError, ConfigError, FloatingPointError, RuntimeError,
                ValueError) as e:
            raise fail(f"{type(e).__name__}: {e}") from None
        value = float(r.metrics["knn_acc"])
        if not math.isfinite(value):
            raise fail(f"the validation kNN accuracy is {value}")
        _client(self.job.tracking_uri).log_batch(r.run_id, metrics=[_metric(
            INTERMEDIATE, value, int(r.metrics["samples_seen"]))])
        trial.set_user_attr("val_linear_acc", float(r.metrics.get("linear_acc", math.nan)))
        ended.append(TrialEnd(self.name, n, "complete", value=value))
        return value

    def _failed_run(self, run_name: str, params: dict, tags: dict, reason: str, trial) -> None:
        from negbench.harness.tracking import Tracker

        tracker = Tracker(self.job.tracking_uri, self.job.experiment)
        tracker.start(run_name, {**params, "suite": self.suite, "strategy": self.strategy},
                      {**tags, "suite": self.suite, "strategy": self.strategy})
        trial.set_user_attr(ATTR_RUN, tracker.run_id)
        tracker.set_tags({"failure": reason[:4000]})
        tracker.end("FAILED")


def _metric(key: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def _client(uri: str | None):
    from mlflow import MlflowClient

    from negbench.harness.tracking import resolve_uri

    _quiet()
    return MlflowClient(tracking_uri=resolve_uri(uri))


# --------------------------------------------------------------------------- summaries
@dataclass
class Summary:
    name: str
    suite: str
    strategy: str
    tally: Tally
    default: float | None
    best: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    seconds: float
    settings: dict

    @property
    def gain(self) -> float | None:
        if self.best is None or self.default is None:
            return None
        return self.best - self.default


def summarize(study) -> Summary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: (t.value, -t.number)) if done else None
    default = next((t.value for t in done if t.user_attrs.get(ATTR_DEFAULT)), None)
    seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                  if counts(t) and t.datetime_start and t.datetime_complete)
    _, suite, strategy = study.study_name.split(":", 2)
    return Summary(study.study_name, suite, strategy, tally(trials), default,
                   None if best is None else best.value, None if best is None else best.number,
                   {} if best is None else dict(best.params), seconds,
                   study.user_attrs.get(ATTR_SETTINGS, {}))


def summary_tables(summaries: list[Summary], trials_wanted: int | None = None) -> list:
    """A rich table per suite: strategy, trials (complete/pruned/failed), default and best val
    kNN, gain, and the time spent in its trials."""
    from rich.table import Table

    out = []
    for suite in dict.fromkeys(s.suite for s in summaries):
        rows = [s for s in summaries if s.suite == suite]
        budget = rows[0].settings.get("budget", "?")
        t = Table(title=f"tuning on {suite} ({budget}, val kNN accuracy; test split unused)")
        for c, j in (("strategy", "left"), ("trials (complete/pruned/failed)", "right"),
                     ("default val kNN", "right"), ("best val kNN", "right"),
                     ("gain", "right"), ("best trial", "right"), ("trial time s", "right")):
            t.add_column(c, justify=j)
        for s in sorted(rows, key=lambda s: -(s.best if s.best is not None else -1)):
            n = s.tally
            want = f" of {trials_wanted}" if trials_wanted and n.counted < trials_wanted else ""
            gain = "-" if s.gain is None else f"{s.gain:+.4f}"
            extra = f", {n.interrupted} interrupted" if n.interrupted else ""
            t.add_row(s.strategy,
                      f"{n.counted}{want} ({n.complete}/{n.pruned}/{n.failed}){extra}",
                      "-" if s.default is None else f"{s.default:.4f}",
                      "-" if s.best is None else f"{s.best:.4f}", gain,
                      "-" if s.best_trial is None else str(s.best_trial),
                      f"{s.seconds:,.1f}")
        out.append(t)
    return out


# --------------------------------------------------------------------------- running
def open_studies(job: Job, create: bool = True) -> list[StudyWork]:
    _quiet()
    storage = open_storage(job.storage, job.heartbeat)
    return [StudyWork(job, su, st, storage, create) for su in job.suites for st in job.strategies]


def work(studies: list[StudyWork], on_event: Callable[[dict], None]) -> None:
    """Run trials until every study has its T trials: always the first study in order with a
    free place; when none has one but some still have trials running elsewhere, wait for them
    (or for their heartbeats to lapse)."""
    pending = list(studies)
    while pending:
        ran = False
        for s in list(pending):
            n = s.poll()
            if n.counted >= s.job.trials:
                pending.remove(s)
                if n.running == 0:
                    s.close_parent()
                on_event({"event": "study_done", "study": s.name})
                continue
            if n.waiting or n.claimed < s.job.trials:  # an enqueued trial, or a free place
                s.run_one(on_event)
                ran = True
                break
        if not ran and pending:
            time.sleep(POLL_SECONDS)


def export_best(storage_url: str, prefix: str, path: str | Path) -> list[Summary]:
    """Write the best configuration of every study ``PREFIX:SUITE:STRATEGY`` in the storage as
    TOML tables ``[SUITE.STRATEGY]``; the summaries of the studies written."""
    import optuna

    _quiet()
    storage = open_storage(storage_url, create=False)
    names = sorted(n for n in optuna.get_all_study_names(storage)
                   if n.startswith(f"{prefix}:") and n.count(":") == 2)
    if not names:
        raise ConfigError(f"no study named {prefix}:SUITE:STRATEGY in "
                          f"{shown_url(storage_url)} (see --study)")
    summaries = [summarize(optuna.load_study(study_name=n, storage=storage)) for n in names]
    written = [s for s in summaries if s.best is not None]
    if not written:
        raise ConfigError(f"none of the {len(names)} studies under {prefix!r} in "
                          f"{shown_url(storage_url)} has a completed trial yet")
    lines = [f"# the best configuration of each study {prefix}:SUITE:STRATEGY in "
             f"{shown_url(storage_url)}, written by `negbench tune --export`",
             "# values: the searched dotted run keys of the best completed trial (validation kNN "
             "accuracy);",
             "# an ablation spec applies them with: tuned = \"<this file>\""]
    for s in written:
        n = s.tally
        lines += ["", f"# study {s.name}: best val kNN {s.best:.4f} (trial {s.best_trial}), "
                      f"default {'-' if s.default is None else f'{s.default:.4f}'}; "
                      f"{n.counted} trials ({n.complete} complete, {n.pruned} pruned, "
                      f"{n.failed} failed)",
                  f"# tuned under budget {s.settings.get('budget', '?')}, seed "
                  f"{s.settings.get('seed', '?')}"
                  + "".join(f", --set {k}={v}" for k, v in s.settings.get("sets", {}).items()),
                  f"[{_toml_key(s.suite)}.{_toml_key(s.strategy)}]"]
        for k, v in sorted(s.best_params.items()):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return written


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot export the non-finite value {v}")
        return repr(v)
    if v is None:
        return '"none"'
    return json.dumps(str(v))


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
                   help="optuna storage (default sqlite:///negbench-runs/optuna.db); an RDB "
                        "URL such as postgresql://USER:PASS@HOST/DB to share studies between "
                        "machines")
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
    p.set_defaults(handler=cmd_tune)
    return p


def job_from_args(args) -> Job:
    from negbench import strategies, suites
    from negbench.harness.config import parse_budget, parse_sets

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
    storage = args.storage or default_storage()
    db = _sqlite_path(storage)
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
    from negbench.harness.cli import _console, _progress

    if args.export:
        storage = args.storage or default_storage()
        written = export_best(storage, args.study, args.export)
        out = _console(stderr=False)
        for s in written:
            out.print(f"{s.name}: best val kNN {s.best:.4f} (trial {s.best_trial}) -> "
                      f"[{s.suite}.{s.strategy}]", highlight=False)
        out.print(f"wrote {len(written)} configuration(s) to {args.export}", highlight=False)
        return 0
    job = job_from_args(args)
    if args.worker is not None:  # a local worker: trials only, events as JSON lines
        if os.environ.get("NEGBENCH_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["NEGBENCH_THREADS"]))
        studies = open_studies(job, create=False)
        work(studies, lambda ev: print(json.dumps(ev, default=str), flush=True))
        return 0
    t0 = time.perf_counter()
    studies = open_studies(job)
    for s in studies:
        s.parent()
    console = _console()
    total = len(studies) * job.trials
    done0 = sum(min(tally(s.trials()).counted, job.trials) for s in studies)
    failures: list[str] = []
    with _progress(console, args.no_progress) as progress:
        overall = progress.add_task(
            f"tune: {len(studies)} studies x {job.trials} trials", total=total,
            completed=done0, stats="")
        rows: dict[int, Any] = {}

        def on_event(ev: dict, w: int = 0) -> None:
            kind = ev.get("event")
            row = rows.get(w)
            label = f"{ev.get('study', '').split(':', 1)[-1]} trial {ev.get('trial')}"
            if kind == "start":
                if row is None:
                    row = rows[w] = progress.add_task("", total=100, stats="")
                progress.update(row, description=f"worker {w}: {label}"
                                + (" (default)" if ev.get("default") else ""),
                                completed=0, stats="")
            elif kind == "progress" and row is not None:
                progress.update(row, completed=100 * ev["fraction"],
                                stats=f"loss {ev['loss']:.3f}")
            elif kind == "checkpoint" and row is not None:
                progress.update(row, stats=f"val kNN {ev['value']:.3f} at "
                                           f"{ev['fraction']:.0%}")
            elif kind == "end":
                state = ev["state"]
                if state in ("complete", "pruned", "failed"):
                    progress.advance(overall)
                if row is not None:
                    v = ev.get("value")
                    progress.update(row, completed=100, stats=state + (
                        f" val kNN {v:.4f}" if v is not None else ""))
                if state == "failed":
                    failures.append(f"{label}: {ev.get('reason', '')}")

        if args.workers == 1:
            work(studies, on_event)
        else:
            codes = spawn_workers(args, job, args.workers, on_event)
            for w, code in enumerate(codes):
                if code != 0:
                    failures.append(f"worker {w}: exited with status {code}")
            for s in studies:  # the workers close the parents; make sure
                n = s.poll()
                if n.counted >= job.trials and n.running == 0:
                    s.close_parent()
    wall = time.perf_counter() - t0
    summaries = [summarize(s.study) for s in studies]
    out = _console(stderr=False)
    for t in summary_tables(summaries, job.trials):
        out.print(t)
    for line in failures:
        out.print(f"[red]failed[/red] {line}", highlight=False)
    from negbench.harness.tracking import resolve_uri

    out.print(f"tuning wall-clock {wall:,.1f} s; studies in {shown_url(job.storage)} "
              f"(prefix {job.prefix!r}), runs in mlflow experiment {job.experiment!r} at "
              f"{resolve_uri(job.tracking_uri)}", highlight=False)
    incomplete = [s.name for s in summaries if s.tally.counted < job.trials or s.best is None]
    return 1 if incomplete else 0


def spawn_workers(args, job: Job, n: int, on_event: Callable[[dict, int], None]) -> list[int]:
    """Start ``n`` local worker processes on the job's studies, pass their JSON event lines to
    ``on_event(event, worker)``, and return their exit codes."""
    from negbench.harness.ablate import worker_env

    base = [sys.executable, "-m", "negbench.harness.tune", "--suite", ",".join(job.suites),
            "--strategy", ",".join(job.strategies), "--trials", str(job.trials),
            "--seed", str(job.seed), "--pruner", job.pruner,
            "--prune-after", str(job.prune_after),
            "--checkpoints", ",".join(map(str, job.checkpoints)), "--storage", job.storage,
            "--study", job.prefix, "--experiment", job.experiment,
            "--heartbeat", str(job.heartbeat), "--events"]
    if args.budget:
        base += ["--budget", args.budget]
    for s in args.sets:
        base += ["--set", s]
    for opt, v in (("--tracking-uri", job.tracking_uri), ("--data-dir", job.data_dir),
                   ("--device", args.device)):
        if v:
            base += [opt, v]
    procs = [subprocess.Popen(base + ["--worker", f"{i}/{n}"], stdout=subprocess.PIPE,
                              text=True, env=worker_env(i, n)) for i in range(n)]
    lock = threading.Lock()

    def pump(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            with lock:
                on_event(ev, i)

    threads = [threading.Thread(target=pump, args=(i, p), daemon=True)
               for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        raise
    for t in threads:
        t.join(timeout=5)
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    """``negbench tune`` on its own (``python -m negbench.harness.tune``), with ``negbench``'s error
    handling: bad input is one line and status 2."""
    from negbench.harness.cli import EXIT_FAILED, EXIT_USAGE, _Parser
    from negbench.harness.runner import RunFailed
    from negbench.harness.spec import SpecError
    from negbench.strategies import StrategyError
    from negbench.strategies.registry import RegistryError
    from negbench.suites import SuiteError

    parser = _Parser(prog="negbench")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["tune", *argv])
    os.environ.setdefault("NEGBENCH_COMMAND", shlex.join(["negbench", "tune", *argv]))
    try:
        return args.handler(args)
    except (ConfigError, RegistryError, SuiteError, StrategyError, SpecError) as e:
        sys.stderr.write(f"negbench tune: error: {e}\n")
        return EXIT_USAGE
    except RunFailed as e:
        sys.stderr.write(f"negbench tune: run failed: {e}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("negbench tune: interrupted (run the same command again to resume)\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Job", "StudyWork", "Summary", "add_parser", "cmd_tune", "default_params",
           "export_best", "main", "search_space", "study_name", "summarize", "work"]
