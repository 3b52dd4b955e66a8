"""The search space of ``negbench tune``: the nuisance parameters every strategy shares, around
the values a run would use, plus the strategy's own declared space (see
:mod:`negbench.harness.tune`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from negbench.harness.config import ConfigError, RunConfig
from negbench.harness.tune_settings import NUISANCE
from negbench.strategies.base import Choice, Float, Int

Dist = Float | Int | Choice


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


def set_value(v: Any) -> str:
    """A value as ``--set`` takes it (repr keeps a float's every digit)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)

