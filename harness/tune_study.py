"""One study of ``negbench tune`` at work: its optuna study, its mlflow parent run, one trial
after another, and the loop that runs trials until every study has its count (see
:mod:`negbench.harness.tune`)."""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from negbench.harness.config import ConfigError, build_config
from negbench.harness.redact import redact
from negbench.harness.store import mlflow_client
from negbench.harness.tags import COMMAND_TAG, DEFAULT_TAG, ROLE_TAG
from negbench.harness.tune_job import Job, Tally, claims, counts, open_storage, quiet_optuna, tally
from negbench.harness.tune_report import summarize
from negbench.harness.tune_settings import (
    ATTR_DEFAULT,
    ATTR_FAILURE,
    ATTR_ORIGIN,
    ATTR_RUN,
    ATTR_SETTINGS,
    ATTR_SURPLUS,
    INTERMEDIATE,
    POLL_SECONDS,
    TAG_PRUNED,
    TAG_STUDY,
    TAG_TRIAL,
    study_name,
)
from negbench.harness.tune_space import default_params, describe, search_space, set_value, suggest


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
        s = suite_registry.create(suite, self.base.suite_cfg, data_dir=job.data_dir)
        s.locate()
        if not s.load().labelled:
            raise ConfigError(f"{suite}: its data has no labels; tuning maximises validation "
                              "kNN accuracy, which needs them")
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
                                  f"{redact(job.storage)}") from None
        if self.study.direction != direction:
            raise ConfigError(f"study {self.name!r} in {redact(job.storage)} is not a "
                              "maximisation; use another --study prefix")
        stored = self.study.user_attrs.get(ATTR_SETTINGS)
        if stored is None:
            self.study.set_user_attr(ATTR_SETTINGS, self.settings)
            from negbench.harness.tracking import command_line, git_commit

            self.study.set_user_attr(ATTR_ORIGIN, {"command": command_line(),
                                                   "commit": git_commit()})
            if not self.study.get_trials(deepcopy=False):
                self.study.enqueue_trial(self.defaults, user_attrs={ATTR_DEFAULT: True})
                for params in job.enqueue:
                    self.study.enqueue_trial(params)
        elif stored != json.loads(json.dumps(self.settings)):
            diff = [k for k in self.settings
                    if json.loads(json.dumps(self.settings[k])) != stored.get(k)]
            k = diff[0] if diff else "settings"
            raise ConfigError(f"study {self.name!r} in {redact(job.storage)} was created with "
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
            client = client or mlflow_client(self.job.tracking_uri)
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
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{TAG_STUDY}` = '{self.name}'",
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
        tags = {"trials": str(self.job.trials), "storage": redact(self.job.storage)}
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
                ROLE_TAG: "study", TAG_STUDY: self.name, "suite": self.suite,
                "strategy": self.strategy, COMMAND_TAG: command_line(), **tags})
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
        mlflow_client(self.job.tracking_uri).log_batch(parent, metrics=[
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
                TAG_PRUNED: "false", DEFAULT_TAG: str(is_default).lower()}
        run_name = f"{self.suite}/{self.strategy}/trial {n}"

        def fail(reason: str) -> _TrialFailed:
            trial.set_user_attr(ATTR_FAILURE, reason[:2000])
            ended.append(TrialEnd(self.name, n, "failed", reason=reason))
            return _TrialFailed(reason)

        # no linear probe unless --set asks for one: the objective reads kNN alone, and the
        # probe costs more than the kNN (fashion-mnist: 24 s against 12 s on 2 CPU threads)
        sets = {"eval.linear_epochs": "0", **self.job.sets, "eval.split": "val",
                **{k: set_value(v) for k, v in params.items()}}
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
        mlflow_client(self.job.tracking_uri).log_batch(r.run_id, metrics=[_metric(
            INTERMEDIATE, value, int(r.metrics["samples_seen"]))])
        if "linear_acc" in r.metrics:
            trial.set_user_attr("val_linear_acc", float(r.metrics["linear_acc"]))
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



def open_studies(job: Job, create: bool = True) -> list[StudyWork]:
    quiet_optuna()
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

