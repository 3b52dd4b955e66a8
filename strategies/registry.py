"""A small name -> class registry (timm's ``register_model``/``create_model`` pattern, stricter).

Duplicate names raise; unknown names raise with the closest registered names. The suites use the
same class for their own registry.

Plugins: a user's own strategy or suite registers from outside the repository in two ways.

- **Entry points** of an installed package, in the groups ``negbench.strategies`` and
  ``negbench.suites`` (``[project.entry-points."negbench.strategies"] mine = "pkg.module"``):
  each is loaded on the registry's first lookup. The value may name a module (importing it runs
  its ``@register``) or a class, which is registered under the entry point's name unless the
  import registered it already.
- **``load_plugin(ref)``**: a module name or a ``.py`` file (``negbench --plugin REF``, or
  ``plugins = [...]`` in a spec). Each loaded reference is added to ``$NEGBENCH_PLUGINS``, so
  the processes a command starts (ablation workers, tuning workers, submitted jobs) load it too.

Every name keeps its **origin** ("negbench", the entry point, or the plugin's file or module),
which ``negbench strategies`` and ``negbench suites`` show.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from negbench import NegbenchError

PLUGIN_ENV = "NEGBENCH_PLUGINS"  # os.pathsep-separated plugin references, for child processes
BUILTIN = "negbench"


class RegistryError(NegbenchError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it as written
        return str(self.args[0])


class PluginError(NegbenchError):
    """A plugin could not be found or failed to import."""


_origin_stack: list[str] = []  # the plugin being imported, innermost last
_plugins: dict[str, str] = {}  # loaded reference (resolved file or module name) -> origin


@contextlib.contextmanager
def _origin(origin: str) -> Iterator[None]:
    _origin_stack.append(origin)
    try:
        yield
    finally:
        _origin_stack.pop()


def load_plugin(ref: str, base: str | Path | None = None) -> str:
    """Import plugin ``ref`` (a ``.py`` file, relative to ``base`` if given, else to the working
    directory; or a module name) once per process; the strategies and suites it registers record
    it as their origin. Adds it to ``$NEGBENCH_PLUGINS`` for child processes. Returns the
    origin. Raises :class:`PluginError` (one line) if it cannot be found or imported."""
    ref = str(ref).strip()
    if not ref:
        raise PluginError("a plugin reference is empty")
    is_file = ref.endswith(".py") or os.sep in ref or "/" in ref
    if is_file:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = Path(base or ".") / path
        path = path.resolve()
        key = str(path)
        if not path.is_file():
            raise PluginError(f"plugin {ref}: no such file ({path})")
    else:
        key = ref
    if key in _plugins:
        return _plugins[key]
    origin = f"plugin {key}"
    with _origin(origin):
        try:
            if is_file:
                digest = hashlib.sha1(key.encode()).hexdigest()[:8]
                name = f"negbench_plugin_{path.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise PluginError(f"plugin {ref}: not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # dataclasses and pickling look the module up
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                importlib.import_module(ref)
        except NegbenchError as e:
            raise PluginError(f"plugin {ref}: {e}") from None
        except Exception as e:  # a user's code: any error is the plugin's, said in one line
            raise PluginError(f"plugin {ref} failed to import: {type(e).__name__}: {e}") from None
    _plugins[key] = origin
    listed = [p for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]
    if key not in listed:
        os.environ[PLUGIN_ENV] = os.pathsep.join([*listed, key])
    return origin


def load_env_plugins() -> None:
    """Load the plugins ``$NEGBENCH_PLUGINS`` names (set by a parent command)."""
    for ref in os.environ.get(PLUGIN_ENV, "").split(os.pathsep):
        if ref:
            load_plugin(ref)


def loaded_plugins() -> list[str]:
    """The plugin references loaded in this process, in load order."""
    return list(_plugins)


class Registry:
    """Names -> classes. With ``package``/``path``, every module of that package is imported on
    first lookup, so that a new file registers itself without anyone listing it; then the
    entry points of group ``entry_points`` and the plugins of ``$NEGBENCH_PLUGINS`` load."""

    def __init__(self, kind: str, package: str | None = None, path: Iterable[str] = (),
                 entry_points: str | None = None):
        self.kind = kind
        self._items: dict[str, type] = {}
        self._origins: dict[str, str] = {}
        self._package = package
        self._path = list(path)
        self._group = entry_points
        self._loaded = package is None

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in pkgutil.iter_modules(self._path):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self._package}.{mod.name}")
        if self._group:
            for ep in importlib.metadata.entry_points(group=self._group):
                self._load_entry_point(ep)
        load_env_plugins()

    def _load_entry_point(self, ep) -> None:
        dist = getattr(ep.dist, "name", None) or "?"
        with _origin(f"entry point {ep.value} ({dist})"):
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginError(f"entry point {ep.name} = {ep.value} ({self._group}) failed "
                                  f"to load: {type(e).__name__}: {e}") from None
            if isinstance(obj, type) and obj not in self._items.values():
                self.register(ep.name)(obj)

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._items:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._items[name].__module__}.{self._items[name].__qualname__})"
                )
            cls.name = name
            self._items[name] = cls
            if _origin_stack:
                self._origins[name] = _origin_stack[-1]
            elif cls.__module__.split(".")[0] == BUILTIN:
                self._origins[name] = BUILTIN
            else:
                self._origins[name] = f"module {cls.__module__}"
            return cls

        return deco

    def origin(self, name: str) -> str:
        """Where ``name`` was registered from: "negbench", an entry point, a plugin or a module."""
        self.get(name)
        return self._origins.get(name, BUILTIN)

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
        self._origins.pop(name, None)
