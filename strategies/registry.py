"""A small name -> class registry (timm's ``register_model``/``create_model`` pattern, stricter).

Duplicate names raise; unknown names raise with the closest registered names. The suites use the
same class for their own registry.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable

from negbench import NegbenchError


class RegistryError(NegbenchError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it as written
        return str(self.args[0])


class Registry:
    """Names -> classes. With ``package``/``path``, every module of that package is imported on
    first lookup, so that a new file registers itself without anyone listing it."""

    def __init__(self, kind: str, package: str | None = None, path: Iterable[str] = ()):
        self.kind = kind
        self._items: dict[str, type] = {}
        self._package = package
        self._path = list(path)
        self._loaded = package is None

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in pkgutil.iter_modules(self._path):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self._package}.{mod.name}")

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._items:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._items[name].__module__}.{self._items[name].__qualname__})"
                )
            cls.name = name
            self._items[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type:
        self._load_all()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_all()
        return name in self._items

    def unregister(self, name: str) -> None:
        """Remove a name (for tests that register throwaway classes)."""
        self._items.pop(name, None)
