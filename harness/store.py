"""The stores negbench keeps its state in, opened in one place: the mlflow tracking store (runs)
and optuna's RDB storage (the work queue of ``ablate`` and ``worker``, the studies of ``tune``).

- Tracking URIs are checked before anything runs (:func:`check_tracking_uri`): an unknown scheme
  is one line naming what is allowed, not a traceback from deep inside mlflow.
- A sqlite file (mlflow's or optuna's) is created under an exclusive lock on ``FILE.lock``
  beside it (:func:`file_lock`), so processes that start together on a store that does not exist
  yet do not race through the same schema migration; the second waits, then opens the store the
  first made.
- optuna's sqlite storages run every transaction as ``BEGIN IMMEDIATE``: sqlite's default
  deferred transactions read and then write without holding the lock in between, so two processes
  could both take the same WAITING trial of a queue. With the write lock taken first, a trial is
  handed to exactly one process (PostgreSQL's row locks give the same on a shared server).
- :func:`queue_url` is where ``negbench ablate`` keeps its work queue by default.

Only the standard library and ``negbench`` are imported at module level; mlflow, optuna and
sqlalchemy inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from negbench import NegbenchError
from negbench.harness.redact import redact
from negbench.harness.tags import CELL_TAG

DEFAULT_DIR = Path("negbench-runs")

# the schemes mlflow stores runs in (its tracking-store registry), as a user writes them
TRACKING_SCHEMES = {
    "": "a directory (mlflow's file store)",
    "file": "file:///PATH",
    "sqlite": "sqlite:///PATH",
    "postgresql": "postgresql://USER@HOST/DB",
    "mysql": "mysql://USER@HOST/DB",
    "mssql": "mssql://USER@HOST/DB",
    "http": "http://HOST:PORT (a tracking server)",
    "https": "https://HOST",
    "databricks": "databricks",
}


class StoreError(NegbenchError):
    """A store cannot be used (a bad URI, a server that cannot be reached, a driver that is not
    installed): one line, exit status 2."""


# --------------------------------------------------------------------------- locations
def default_uri(root: Path = DEFAULT_DIR) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


STORAGE_ENV = "NEGBENCH_STORAGE"  # the optuna storage (tune's studies, a worker's queue)
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # mlflow's own


def env_storage(url: str | None) -> str | None:
    """The storage URL in use: ``url`` (``--storage``, ``--queue``), else ``$NEGBENCH_STORAGE``,
    else None. The environment keeps a password off the command line, where ``ps`` shows it to
    every user of the machine."""
    return url or os.environ.get(STORAGE_ENV) or None


def url_env(storage: str | None, tracking_uri: str | None) -> dict[str, str]:
    """The environment variables that hand a child process these URLs: children get URLs
    through their environment, never their argv."""
    env = {}
    if storage:
        env[STORAGE_ENV] = storage
    if tracking_uri:
        env[TRACKING_ENV] = tracking_uri
    return env


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI in use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the local sqlite
    store under ``./negbench-runs/``."""
    return uri or os.environ.get(TRACKING_ENV) or default_uri()


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI in use (:func:`resolve_uri`) as it may be printed: password masked."""
    return redact(resolve_uri(uri))


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for any other URL, or an in-memory one)."""
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def queue_url(tracking_uri: str | None) -> str:
    """Where ``negbench ablate`` keeps its work queue (an optuna sqlite storage) by default.

    Beside a sqlite tracking store: ``queue.db`` next to ``mlflow.db`` (``NAME-queue.db`` next to
    any other ``NAME.db``), so every ablation on that store, from any directory, shares it. For
    any other tracking URI (a server): a file per user and per tracking URI in the temporary
    directory, shared by the ablations of this user on this machine; machines share cells only
    through ``negbench worker --storage`` on a common database."""
    resolved = resolve_uri(tracking_uri)
    db = sqlite_path(resolved)
    if db is not None:
        db = db.resolve()
        name = "queue.db" if db.stem == "mlflow" else f"{db.stem}-queue.db"
        return f"sqlite:///{db.parent / name}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    root = Path(tempfile.gettempdir()) / f"negbench-{user}"
    root.mkdir(mode=0o700, exist_ok=True)
    h = hashlib.sha256(resolved.encode()).hexdigest()[:16]
    return f"sqlite:///{root / f'queue-{h}.db'}"


def check_tracking_uri(uri: str) -> str:
    """``uri`` if mlflow can store runs there (by its scheme), else StoreError saying what is
    allowed. Imports nothing heavy: it runs while the command line is parsed."""
    scheme = urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a path
        scheme = ""
    base = scheme.split("+", 1)[0]
    if base in TRACKING_SCHEMES or base in _plugin_schemes():
        return uri
    allowed = "; ".join(TRACKING_SCHEMES.values())
    raise StoreError(f"{redact(uri)!r} is not a tracking URI mlflow can store runs at (unknown "
                     f"scheme {scheme + '://'!r}); allowed: {allowed}")


def _plugin_schemes() -> set[str]:
    """Schemes that installed mlflow plugins add (entry points ``mlflow.tracking_store``)."""
    try:
        return {e.name for e in metadata.entry_points(group="mlflow.tracking_store")}
    except Exception:  # noqa: BLE001 - broken metadata: no plugins
        return set()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``PATH.lock`` (flock: released when the process dies), for as long as
    the block runs; nothing where the platform has no flock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def quiet() -> None:
    """alembic's migration chatter on a new store and mlflow's notes are noise for our users.
    mlflow sets its logger's level when it is first imported, so it is imported first."""
    import logging

    import mlflow  # noqa: F401 - its import configures the "mlflow" logger, which we then quiet

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- mlflow
_opened: set[str] = set()  # sqlite tracking stores this process has opened (mlflow caches them)


def mlflow_client(uri: str | None = None):
    """An ``MlflowClient`` on the tracking store ``uri`` (resolved as :func:`resolve_uri`); a new
    sqlite store is created (its directory too) under :func:`file_lock`."""
    resolved = resolve_uri(uri)
    check_tracking_uri(resolved)
    quiet()
    db = sqlite_path(resolved)
    if db is None or resolved in _opened:
        return _client(resolved)
    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db):
        client = _client(resolved)
    _opened.add(resolved)
    return client


def _client(resolved: str):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=resolved)
    except MlflowException as e:
        raise StoreError(f"tracking store {redact(resolved)!r}: cannot open it "
                         f"({str(e).strip().splitlines()[0][:300]})") from None


def search_runs(uri: str | None, experiment: str, status: str | None = None) -> list:
    """Every run of ``experiment`` (only those with ``status``, when given); none when there is
    no such experiment."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"attributes.status = '{status}'" if status else ""
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def completed(uri: str | None, experiment: str, tag: str = CELL_TAG) -> dict[str, Any]:
    """Cell key (the run's ``tag``) -> its FINISHED run, for every completed cell of
    ``experiment``."""
    return {r.data.tags[tag]: r for r in search_runs(uri, experiment, "FINISHED")
            if tag in r.data.tags}


def close_runs(uri: str | None, experiment: str, which: Callable[[dict], bool],
               reason: str) -> int:
    """Mark the RUNNING runs of ``experiment`` whose tags satisfy ``which`` as KILLED, with
    ``reason`` as their failure; how many there were."""
    stale = [r for r in search_runs(uri, experiment, "RUNNING") if which(r.data.tags)]
    if stale:
        client = mlflow_client(uri)
        for r in stale:
            client.set_tag(r.info.run_id, "failure", reason)
            client.set_terminated(r.info.run_id, status="KILLED")
    return len(stale)


# --------------------------------------------------------------------------- optuna
def open_optuna(url: str, *, heartbeat: int | None = None, grace: int | None = None,
                on_stale: Callable | None = None, create: bool = True,
                label: str = "--storage", missing: str = ""):
    """optuna's RDB storage at ``url``, with heartbeats every ``heartbeat`` s (a trial silent
    for ``grace`` s is stale; ``on_stale(study, trial)`` hears it). A sqlite file is created
    (``create``) under :func:`file_lock`, or must exist; its transactions take the write lock at
    their start. Errors are StoreError, their message led by ``label`` (``missing``: the hint for
    a sqlite file that does not exist)."""
    import optuna

    db = sqlite_path(url)
    shown = redact(url)
    if db is not None:
        if not create and not db.is_file():
            raise StoreError(f"{label} {shown}: no such optuna database"
                             + (f" ({missing})" if missing else ""))
        db.parent.mkdir(parents=True, exist_ok=True)
    elif not re.match(r"^[a-z][a-z0-9+]*://", url):
        raise StoreError(f"{label} {shown!r} is not a database URL; allowed: sqlite:///PATH or an "
                         "RDB URL such as postgresql://USER@HOST/DB")
    kwargs: dict[str, Any] = {}
    if db is not None:  # several local processes share the file: wait for its lock
        kwargs["connect_args"] = {"timeout": 60, "isolation_level": None}
    else:
        kwargs["pool_pre_ping"] = True
    beats: dict[str, Any] = {}
    if heartbeat is not None:
        beats = {"heartbeat_interval": heartbeat, "grace_period": grace or 3 * heartbeat,
                 "heartbeat_stale_trial_callback": on_stale}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        with file_lock(db) if db is not None else contextlib.nullcontext():
            storage = _rdb(url, shown, kwargs, beats, label)
    if db is not None:
        _begin_immediate(storage.engine)
    return storage


def _rdb(url: str, shown: str, kwargs: dict, beats: dict, label: str):
    """``RDBStorage``, retried when processes on one new PostgreSQL database race to create
    optuna's tables (a sqlite file is created under a lock instead)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **beats)
        except (IntegrityError, ProgrammingError) as e:
            if attempt == 5:
                raise StoreError(f"{label} {shown}: cannot create optuna's tables "
                                 f"({type(e).__name__}: {_first(e)})") from None
            time.sleep(0.5 + attempt)
        except ImportError as e:
            raise StoreError(f"{label} {shown}: its database driver is not installed ({e}); for "
                             "PostgreSQL install the team extra: pip install -e '.[team]'"
                             ) from None
        except Exception as e:  # noqa: BLE001 - a bad URL, an unreachable server, ...
            raise StoreError(f"cannot open {label} {shown!r}: {type(e).__name__}: "
                             f"{_first(e)}") from None
    raise AssertionError("unreachable")


def _first(e: BaseException) -> str:
    lines = redact(str(e)).strip().splitlines()
    return lines[0][:200] if lines else ""


def _begin_immediate(engine) -> None:
    """Every transaction on this sqlite engine starts by taking the database's write lock
    (SQLAlchemy's recipe for pysqlite; the connections are in autocommit mode, so BEGIN is ours
    alone)."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


__all__ = ["CELL_TAG", "DEFAULT_DIR", "STORAGE_ENV", "TRACKING_ENV", "StoreError",
           "check_tracking_uri", "close_runs", "completed", "default_uri", "env_storage",
           "file_lock", "mlflow_client", "open_optuna", "queue_url", "quiet", "resolve_uri",
           "search_runs", "sqlite_path", "url_env"]
