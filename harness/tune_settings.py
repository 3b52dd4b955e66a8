"""The names and defaults of ``negbench tune`` (see :mod:`negbench.harness.tune`), in a module
that imports nothing, so the command's parser and every part of the tuner share them."""

from __future__ import annotations

from pathlib import Path

from negbench.harness.tags import DEFAULT_TAG

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

ATTR_DEFAULT = DEFAULT_TAG  # the study attribute has the run tag's name
ATTR_FAILURE = "negbench.failure"
ATTR_SURPLUS = "negbench.surplus"
ATTR_RUN = "mlflow.run_id"
ATTR_SETTINGS = "negbench.settings"
# who created a study: {"command": the tuning command, redacted; "commit": negbench's git commit}
ATTR_ORIGIN = "negbench.origin"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_PRUNED = "pruned"
INTERMEDIATE = "val_knn_acc"


def study_name(prefix: str, suite: str, strategy: str) -> str:
    return f"{prefix}:{suite}:{strategy}"


def default_storage() -> str:
    return f"sqlite:///{(DEFAULT_STORAGE_DIR / 'optuna.db').resolve()}"
