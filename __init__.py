"""negbench: a benchmarking and ablation harness for negative sampling in contrastive learning.

The repository's top-level folders are installed as ``negbench.harness``, ``negbench.strategies``,
``negbench.suites`` and ``negbench.reports``. This module is the public API for using a strategy
in your own training loop, loaded lazily (``import negbench`` does not import torch)::

    import negbench

    strategy = negbench.create("hcl", dim=128, n_train=len(dataset))
    negs = strategy.select(q, k, ctx)           # ctx: a negbench.StepContext
    loss = negbench.info_nce(negs, temperature=0.2).loss
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use: PEP 562)
_API = {
    "create": "negbench.strategies",
    "names": "negbench.strategies",
    "register": "negbench.strategies",
    "Negatives": "negbench.strategies",
    "StepContext": "negbench.strategies",
    "Strategy": "negbench.strategies",
    "info_nce": "negbench.harness.objectives",
    "triplet": "negbench.harness.objectives",
}



class NegbenchError(Exception):
    """The base of every error negbench raises for bad input or a failed run. The command line
    handles it in one place: one line on stderr and ``exit_code`` (2, bad input, unless a
    subclass says otherwise), never a traceback. Defined here, at the root, so that
    ``strategies`` and ``suites`` can derive from it without importing ``harness``."""

    exit_code = 2


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed when it raises. A reader never sees half a file, a crash never
    leaves one where a complete one is looked for, and two processes writing the same file at
    once each write their own temporary (a process- and call-unique name, created by the
    writer, so the file gets the usual permissions). The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


__all__ = sorted([*_API, "NegbenchError", "atomic_path"])


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'negbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
