"""The resolved configuration of one run: typed, frozen, built from defaults plus overrides.

Overrides are ``key=value`` strings with dotted keys (``optim.lr=0.01``,
``strategy.K=512``, ``suite.augment.noise=0.1``). An unknown key is an error that names the key
and lists the allowed ones; a value is converted to the field's type or rejected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from negbench import NegbenchError, strategies, suites
from negbench.harness.objectives import ObjectiveConfig, ObjectiveError
from negbench.strategies.registry import RegistryError


class ConfigError(NegbenchError, ValueError):
    """Bad user input in a configuration: the message names the key and what is allowed."""


BUDGET_KINDS = ("samples", "steps", "flops", "seconds")


@dataclass(frozen=True)
class BudgetConfig:
    """How much training every run of an ablation gets. ``amount`` 0 means the suite default."""

    kind: str = "samples"
    amount: float = 0

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(f"budget kind must be one of {', '.join(BUDGET_KINDS)}; "
                              f"got {self.kind!r}")
        if not (math.isfinite(self.amount) and self.amount >= 0):
            raise ConfigError(f"budget amount must be a positive number; got {self.amount}")
        if self.kind in ("samples", "steps") and self.amount != int(self.amount):
            raise ConfigError(f"a {self.kind} budget must be a whole number; got {self.amount}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (or SGD with momentum); warm-up then cosine decay, as functions of the fraction of
    the budget spent, ending at ``final_lr_ratio * lr`` exactly when the budget ends."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup: float = 0.05  # fraction of the budget
    final_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name must be adamw or sgd; got {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0; got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"optim.warmup must lie in [0, 1); got {self.warmup}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError(f"optim.final_lr_ratio must lie in [0, 1]; got {self.final_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0; got {self.weight_decay}")


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-encoder evaluation: kNN top-1 (Wu et al. 2018 weighted votes) and a linear probe."""

    split: str = "test"  # test | val (tuning uses val, never test)
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_epochs: int = 300  # 0: no linear probe (tuning's trials, whose objective is kNN)
    linear_lr: float = 0.05

    def __post_init__(self):
        if self.split not in ("test", "val"):
            raise ConfigError(f"eval.split must be test or val; got {self.split!r}")
        if self.knn_k < 1:
            raise ConfigError(f"eval.knn_k must be >= 1; got {self.knn_k}")
        if self.linear_epochs < 0:
            raise ConfigError(f"eval.linear_epochs must be >= 0 (0: no linear probe); got "
                              f"{self.linear_epochs}")


@dataclass(frozen=True)
class SpeedConfig:
    """How the encoder is executed; part of every run's config, so that runs under the same
    budget compare like with like (a bf16 run does not pose as an fp32 one).

    ``precision=bf16`` runs the encoders under ``torch.autocast`` with bfloat16 (meant for GPUs;
    a CPU without bf16 units runs it, slowly); strategies, objective and meters stay in float32.
    ``channels_last`` stores image batches and a CNN's weights channels-last (no effect on text).
    ``compile`` trains through ``torch.compile`` of the encoder (needs a C++ compiler on CPU)."""

    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"speed.precision must be fp32 or bf16; got {self.precision!r}")


@dataclass(frozen=True)
class RunConfig:
    suite: str
    strategy: str
    seed: int = 0
    batch_size: int = 0  # 0: the suite's default
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    log_every: int = 20  # steps between host syncs (meters, progress, tracking)
    device: str = "auto"
    strategy_cfg: Any = None
    suite_cfg: Any = None
    # a false-negative filter after any strategy's selection (harness.filters), set as
    # strategy.fn_filter: none | positive-aware | self-guided | oracle
    fn_filter: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (strategy/suite configs under ``strategy``/``suite``)."""
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        d["strategy_cfg"] = {"name": self.strategy, **d["strategy_cfg"]}
        d["suite_cfg"] = {"name": self.suite, **d["suite_cfg"]}
        return d

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, as logged to mlflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = obj

        d = self.to_dict()
        d["strategy"] = d.pop("strategy_cfg")
        d["suite"] = d.pop("suite_cfg")
        walk("", d)
        return out


# --------------------------------------------------------------------------- overrides
def _convert(value: str, tp: Any, key: str, allow_inf: bool = False) -> Any:
    """``value`` as the field's type. A float must be finite (NaN never is), unless its field
    says that infinity means something (``metadata={"allow_inf": True}``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        tp = args[0]
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if tp is float:
            f = float(value)
            if math.isfinite(f) or (math.isinf(f) and allow_inf):
                return f
            raise ConfigError(f"{key}: must be a finite number; got {value!r}")
        if tp is str:
            return value
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not a valid {tp.__name__}") from None
    raise ConfigError(f"{key}: cannot be set from the command line (type {tp})")


def apply_overrides(obj: Any, overrides: dict[str, str], where: str) -> Any:
    """A copy of the frozen dataclass ``obj`` with dotted ``overrides`` applied."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    nested: dict[str, dict[str, str]] = {}
    direct: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        full = f"{where}.{head}" if where else head
        if head not in fields:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown key {full!r} (allowed here: {allowed})")
        sub = getattr(obj, head)
        if rest:
            if not dataclasses.is_dataclass(sub):
                raise ConfigError(f"{full} is a value, not a group: use {full}=VALUE")
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(sub):
            raise ConfigError(f"{full} is a group: set one of its keys, such as "
                              f"{full}.{dataclasses.fields(sub)[0].name}=VALUE")
        else:
            direct[head] = _convert(str(value), hints[head], full,
                                    fields[head].metadata.get("allow_inf", False))
    for head, sub_over in nested.items():
        direct[head] = apply_overrides(getattr(obj, head), sub_over,
                                       f"{where}.{head}" if where else head)
    try:
        return dataclasses.replace(obj, **direct)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


def parse_budget(text: str) -> BudgetConfig:
    """``samples=60000``, ``steps=200``, ``flops=1e12``, ``seconds=30`` (or a bare number of
    samples)."""
    kind, eq, amount = text.partition("=")
    if not eq:
        kind, amount = "samples", text
    try:
        value = float(amount)
    except ValueError:
        raise ConfigError(f"--budget: {amount!r} is not a number (use KIND=AMOUNT, kinds: "
                          f"{', '.join(BUDGET_KINDS)})") from None
    if not value > 0:
        raise ConfigError(f"--budget: the amount must be > 0, got {amount}")
    return BudgetConfig(kind.strip(), value)


def build_config(suite: str, strategy: str, seed: int = 0, budget: BudgetConfig | None = None,
                 sets: dict[str, str] | None = None) -> RunConfig:
    """Resolve a run's config from names, seed, budget and dotted overrides.

    ``strategy.*`` keys go to the strategy's config, ``suite.*`` to the suite's, the rest to the
    run's own groups. The suite's default budget and batch size, and its
    :meth:`~negbench.suites.Suite.run_defaults`, fill in what is left unset."""
    try:
        strat_cls = strategies.get(strategy)
        suite_cls = suites.get(suite)
    except RegistryError as e:
        raise ConfigError(str(e)) from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    sets = dict(sets or {})
    strat_sets = {k[len("strategy."):]: v for k, v in sets.items() if k.startswith("strategy.")}
    suite_sets = {k[len("suite."):]: v for k, v in sets.items() if k.startswith("suite.")}
    run_sets = {k: v for k, v in sets.items() if not k.startswith(("strategy.", "suite."))}
    for bad in ("strategy", "suite", "seed", "strategy_cfg", "suite_cfg"):
        if bad in run_sets:
            raise ConfigError(f"{bad} cannot be set with --set; use --{bad.split('_')[0]}")
    if "fn_filter" in run_sets:
        raise ConfigError("set the false-negative filter as strategy.fn_filter=NAME")
    fn_filter = strat_sets.pop("fn_filter", "none")
    from negbench.harness.filters import FILTERS

    if fn_filter not in FILTERS:
        raise ConfigError(f"strategy.fn_filter must be one of {', '.join(FILTERS)}; got "
                          f"{fn_filter!r}")
    try:
        suite_cfg = apply_overrides(suite_cls.Config(), suite_sets, "suite")
        suite_cls.check_config(suite_cfg)
        # the suite's own defaults for this strategy's knobs, below anything set explicitly
        strat_sets = {**suite_cls.strategy_defaults(suite_cfg, strategy), **strat_sets}
        prior = suite_cls.class_prior(suite_cfg)  # suite.classes coarser than the suite's own
        knobs = {f.name for f in dataclasses.fields(strat_cls.Config)}
        if prior is not None and "tau_plus" in knobs:
            strat_sets = {"tau_plus": f"{prior:.4g}", **strat_sets}
        strat_cfg = apply_overrides(strat_cls.Config(), strat_sets, "strategy")
        # the suite's own defaults for run settings (a pretrained encoder's learning rate),
        # below anything set explicitly
        run_sets = {**suite_cls.run_defaults(suite_cfg), **run_sets}
        base = RunConfig(suite=suite, strategy=strategy, seed=seed,
                         budget=budget or BudgetConfig(), strategy_cfg=strat_cfg,
                         suite_cfg=suite_cfg, fn_filter=fn_filter)
        cfg = apply_overrides(base, run_sets, "")
    except (ObjectiveError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if cfg.budget.amount == 0:
        kind, amount = suite_cls.default_budget
        cfg = dataclasses.replace(cfg, budget=BudgetConfig(kind, amount))
    if cfg.batch_size == 0:
        cfg = dataclasses.replace(cfg, batch_size=suite_cls.default_batch_size)
    if cfg.batch_size < 2:
        raise ConfigError(f"batch_size must be >= 2; got {cfg.batch_size}")
    if cfg.log_every < 1:
        raise ConfigError(f"log_every must be >= 1; got {cfg.log_every}")
    return cfg
