"""``negbench tune``'s job (what one invocation asks for), its storage, and the accounting of
trials that makes every study get the same number of trials that count (see
:mod:`negbench.harness.tune`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from negbench.harness.config import BudgetConfig, ConfigError
from negbench.harness.store import open_optuna, quiet
from negbench.harness.tune_settings import (
    ATTR_FAILURE,
    ATTR_SURPLUS,
    DEFAULT_CHECKPOINTS,
    DEFAULT_EXPERIMENT,
    DEFAULT_HEARTBEAT,
    DEFAULT_PREFIX,
    DEFAULT_PRUNE_AFTER,
    GRACE_BEATS,
    PRUNERS,
    default_storage,
)


# --------------------------------------------------------------------------- storage
def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT, create: bool = True):
    """optuna's RDB storage at ``url`` with heartbeats; a sqlite file's directory is created
    (``create``) or must exist."""
    return open_optuna(url, heartbeat=heartbeat, grace=GRACE_BEATS * heartbeat, create=create,
                       label="--storage",
                       missing="tune something first, or name the storage it used")


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet()


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


