"""Registry of benchmark suites: data, views (positives), encoder and evaluation, one file each.

Every module in this package is imported on first lookup, so a new file registers itself.
"""

from __future__ import annotations

from negbench.strategies.registry import Registry, RegistryError
from negbench.suites.base import DataUnavailable, Split, Suite, SuiteData, SuiteError

REGISTRY = Registry("suite", package=__name__, path=__path__,
                    entry_points="negbench.suites")
register = REGISTRY.register


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str) -> type[Suite]:
    return REGISTRY.get(name)


def create(name: str, cfg=None, *, data_dir: str | None = None) -> Suite:
    cls = get(name)
    return cls(cfg if cfg is not None else cls.Config(), data_dir=data_dir)


__all__ = [
    "DataUnavailable", "REGISTRY", "RegistryError", "Split", "Suite", "SuiteData", "SuiteError",
    "create", "get", "names", "register",
]
