"""Every run is an mlflow run. The default store is a local sqlite database under
``./negbench-runs/`` (mlflow's file store is in maintenance mode); ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` points elsewhere (a shared tracking server, say).

What a run records: params = the whole resolved config (dotted keys); tags = strategy, suite,
seed, budget, objective, git commit, package versions, device; metric histories keyed by samples
seen; the final metrics (``FINAL_METRICS`` at least); the config (and the FNR deciles) as
artifacts. A run that fails is ended FAILED with its reason in the ``failure`` tag.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from negbench.harness.redact import redact
from negbench.harness.store import (
    DEFAULT_DIR,
    default_uri,
    mlflow_client,
    resolve_uri,
    sqlite_path,
)
from negbench.harness.tags import COMMAND_TAG

# DEFAULT_DIR, default_uri and resolve_uri live in harness.store; they stay reachable here
__all__ = ["DEFAULT_DIR", "DEFAULT_EXPERIMENT", "FINAL_METRICS", "PACKAGES", "SEND_EVERY_S",
           "Tracker", "command_line", "default_uri", "git_commit", "package_versions",
           "resolve_uri", "run_tags"]

DEFAULT_EXPERIMENT = "negbench"
FINAL_METRICS = ("knn_acc", "linear_acc", "fnr", "fnr_weighted", "hardness", "samples_seen",
                 "steps", "flops", "wall_seconds", "peak_mem_mb")
PACKAGES = ("torch", "torchvision", "optuna", "mlflow", "pandas", "rich", "scikit-learn",
            "negbench")


def git_commit() -> str:
    """The commit of the negbench checkout (``+dirty`` if modified), or 'unknown'."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


# a running training's curve reaches the store this often (and when the training ends or
# fails); a process killed outright loses at most this many seconds of it
SEND_EVERY_S = 15.0


class Tracker:
    """A thin layer over ``MlflowClient`` (batched logging, sqlite default)."""

    def __init__(self, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT):
        self.uri = resolve_uri(uri)
        # a new sqlite store is made under a lock: processes that start together share it
        self.client = mlflow_client(self.uri)
        self.experiment_id = self._experiment(experiment)
        self.run_id: str | None = None
        self._pending: list = []  # asynchronous metric writes not yet known to be stored
        self._buffer: list = []  # background metrics not yet handed to mlflow
        self._sent = time.monotonic()  # when the buffer was last handed over

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if missing. Processes that start together race to
        create it: the losers find it made and look it up again."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        loc = None
        db = sqlite_path(self.uri)
        if db is not None:
            loc = (db.parent / "artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=loc)
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int, background: bool = False) -> None:
        """Log ``metrics`` at ``step``. Without ``background`` they are stored before this
        returns. With it (the training curve) they are buffered and handed to mlflow's
        asynchronous logger, all together, at most every ``SEND_EVERY_S`` seconds: the training
        loop neither waits for the store nor shares the CPU with a database write at every log
        point (on 2 cores that cost about 2% of a digits run). :meth:`send` hands the buffer
        over at once; :meth:`flush` and :meth:`end` also wait until it is stored."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                 if v is not None and v == v]  # NaN: nothing to log yet
        if background:
            self._buffer.extend(items)
            if time.monotonic() - self._sent >= SEND_EVERY_S:
                self.send()
            return
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def send(self) -> None:
        """Hand the buffered background metrics to mlflow's asynchronous logger."""
        items, self._buffer = self._buffer, []
        self._sent = time.monotonic()
        for i in range(0, len(items), 1000):
            op = self.client.log_batch(self.run_id, metrics=items[i:i + 1000],
                                       synchronous=False)
            if op is not None:
                self._pending.append(op)

    def flush(self) -> None:
        """Store the buffered metrics and wait for every background write (a failed one raises
        here)."""
        self.send()
        pending, self._pending = self._pending, []
        for op in pending:
            op.wait()

    def log_json(self, name: str, obj: Any) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.client.log_artifact(self.run_id, str(p))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            try:
                self.flush()
            finally:
                self.client.set_terminated(self.run_id, status=status)


def command_line() -> str:
    """The command that produced a run: the user's ``negbench ...`` line (``harness.console``
    records it in ``NEGBENCH_COMMAND`` while a command runs; worker processes inherit it), else
    this process's; every URL's password replaced by ``***``."""
    cmd = os.environ.get("NEGBENCH_COMMAND")
    if cmd:
        return redact(cmd)
    return redact(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])) if sys.argv else "unknown"


def run_tags(cfg, device: str) -> dict[str, str]:
    versions = package_versions()
    tags = {
        "strategy": cfg.strategy,
        "suite": cfg.suite,
        "seed": str(cfg.seed),
        "budget": f"{cfg.budget.kind}={cfg.budget.amount:g}",
        "objective": cfg.objective.name,
        "git_commit": git_commit(),
        "device": device,
        "host": platform.node(),
        "python": platform.python_version(),
        COMMAND_TAG: command_line(),
    }
    tags.update({f"version.{k}": v for k, v in versions.items()})
    return tags
