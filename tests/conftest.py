"""Shared test helpers.

``make_ctx`` builds a StepContext whose ``encode`` looks rows up in a fixed table of unit
vectors: the unit tests of a strategy's vectorised selection exercise it on arbitrary embeddings;
the suites' real data is exercised by the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from negbench.harness.check import Table, make_ctx  # noqa: F401  (the tests' fake encoder)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def table() -> Table:
    return Table(300, 16)


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> str:
    """An ablation spec file with ``text`` under ``tmp_path``; its path."""
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def mlflow_uri(tmp_path: Path) -> str:
    """A fresh sqlite mlflow store under ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def experiment_runs(uri: str, experiment: str, status: str | None = None) -> list:
    """The runs of ``experiment`` in the mlflow store at ``uri``, read back with mlflow's own
    client (only those with ``status``, when given); none when there is no such experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"attributes.status = '{status}'" if status else ""
    return client.search_runs([exp.experiment_id], flt, max_results=1000)


# --------------------------------------------------------------------------- PostgreSQL
def _pg_bindir() -> str | None:
    found = shutil.which("initdb")
    if found:
        return str(Path(found).resolve().parent)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return str(Path(dirs[-1]).parent) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(databases: tuple[str, ...] = (), password: str | None = None
                    ) -> Iterator[int]:
    """A real, throw-away PostgreSQL server on 127.0.0.1 (its port is yielded), superuser
    ``negbench``: trusted without a password, or, with ``password``, only with it (scram-sha-256),
    holding the empty ``databases``. As the ``postgres`` user when we are root (the server
    refuses root). Skips the test where psycopg2 or the server is missing."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (the dev extra brings psycopg2-binary)")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server here (initdb not found): `bash scripts/bootstrap.sh "
                    "--dev` installs Debian's postgresql when run as root; or set "
                    "NEGBENCH_TEST_POSTGRES=postgresql+psycopg2://user@host/db")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="negbench-pg-")
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), _free_port()
    auth = ["-A", "trust"]
    if password is not None:
        pwfile = os.path.join(root, "pw")
        Path(pwfile).write_text(password + "\n")
        if as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        auth = ["-A", "scram-sha-256", "--pwfile", pwfile]
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "negbench", *auth,
                    "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l",
                            os.path.join(root, "log"), "-o", opts, "-w", "-t", "60", "start"],
                           capture_output=True, text=True)
    try:
        if start.returncode != 0:
            log = Path(root, "log").read_text() if Path(root, "log").exists() else ""
            pytest.fail(f"the PostgreSQL server did not start: {start.stderr}{log[-2000:]}")
        con = psycopg2.connect(host="127.0.0.1", port=port, user="negbench", dbname="postgres",
                               password=password)
        con.autocommit = True
        for db in databases:
            con.cursor().execute(f"CREATE DATABASE {db}")
        con.close()
        yield port
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
