"""Registry of negative-sampling strategies: one file each, registered by name.

Every module in this package is imported on first lookup, so a new file registers itself.
"""

from __future__ import annotations

from negbench.strategies.base import (
    Choice,
    Float,
    Int,
    Negatives,
    StepContext,
    Strategy,
    StrategyError,
)
from negbench.strategies.registry import Registry, RegistryError

REGISTRY = Registry("strategy", package=__name__, path=__path__,
                    entry_points="negbench.strategies")
register = REGISTRY.register


def names() -> list[str]:
    """Every registered strategy name, sorted."""
    return REGISTRY.names()


def get(name: str) -> type[Strategy]:
    """The strategy class registered as ``name`` (unknown names suggest the closest ones)."""
    return REGISTRY.get(name)


def create(name: str, cfg=None, *, dim: int, n_train: int) -> Strategy:
    """Instantiate a strategy by name with its config (defaults when ``cfg`` is None)."""
    cls = get(name)
    return cls(cfg if cfg is not None else cls.Config(), dim=dim, n_train=n_train)


__all__ = [
    "Choice", "Float", "Int", "Negatives", "REGISTRY", "RegistryError", "StepContext", "Strategy",
    "StrategyError", "create", "get", "names", "register",
]
