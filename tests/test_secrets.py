"""No credential on a command line, in a tag or in a report (issue 20).

A real PostgreSQL server that accepts the user only with its password serves optuna's storage
and mlflow's tracking store. `negbench tune --workers 2` and `negbench ablate --workers 2` run
against it with the password in their URLs; while they run, every process's
``/proc/PID/cmdline`` is read; then every tag, param and artifact of their runs, the report
(HTML, Markdown, JSON) and their output are searched for the password.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import postgres_server
from conftest import write_spec as write

from negbench.harness.redact import redact

PASSWORD = "Secr3t-pw_9"  # what must never leave the process


@pytest.mark.parametrize("url,shown", [
    ("postgresql+psycopg2://nb:PW@127.0.0.1:5432/db", "postgresql+psycopg2://nb:***@127.0.0.1:5432/db"),
    ("postgresql+psycopg2://nb@127.0.0.1:5432/db", "postgresql+psycopg2://nb@127.0.0.1:5432/db"),
    ("postgresql://nb:PW@host/db", "postgresql://nb:***@host/db"),
    ("postgresql://nb:p@ss:w@rd@host/db?sslmode=require", "postgresql://nb:***@host/db?sslmode=require"),
    ("postgresql://host/db?user=nb&password=PW&sslmode=require",
     "postgresql://host/db?user=nb&password=***&sslmode=require"),
    ("http://user:PW@host:5000/path?x=1", "http://user:***@host:5000/path?x=1"),
    ("https://host/api?token=PW&x=2", "https://host/api?token=***&x=2"),
    ("mysql://:PW@host/db", "mysql://:***@host/db"),
    ("http://host:5000", "http://host:5000"),
    ("https://host", "https://host"),
    ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ("", ""),
    # in a longer text: a shell-quoted word may hold a space; free text keeps its port
    ("negbench tune --storage 'postgresql://nb:P W@h/db' --workers 2",
     "negbench tune --storage 'postgresql://nb:***@h/db' --workers 2"),
    ("cannot open --storage 'postgresql://nb:PW@h:1/db': user x@y", "cannot open --storage "
     "'postgresql://nb:***@h:1/db': user x@y"),
    ("at http://host:5000 as a@b", "at http://host:5000 as a@b"),
    ("--storage postgresql://a:PW@h/q --tracking-uri http://b:PW@h:5000",
     "--storage postgresql://a:***@h/q --tracking-uri http://b:***@h:5000"),
])
def test_redact(url, shown):
    assert redact(url) == shown
    assert redact(shown) == shown  # idempotent


@pytest.fixture(scope="module")
def server():
    with postgres_server(databases=("optuna", "mlflow", "queue"), password=PASSWORD) as port:
        yield port


def url(port: int, db: str, password: str | None = PASSWORD) -> str:
    who = f"negbench:{password}" if password else "negbench"
    return f"postgresql+psycopg2://{who}@127.0.0.1:{port}/{db}"


class CmdlineWatch:
    """Reads every process's /proc/PID/cmdline every 50 ms while it runs: which ones (other
    than those in ``exclude``, known only once started, so filtered at the end) held
    ``needle``, and how many negbench child processes it saw."""

    def __init__(self, needle: str):
        self.needle, self.exclude = needle, set()
        self.seen: dict[int, str] = {}  # pid -> a command line that held the needle
        self.children: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def leaks(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in self.seen.items() if pid not in self.exclude}

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == me:
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if self.needle in cmd:
                    self.seen[int(pid)] = cmd
                if "--events" in cmd and "negbench.harness" in cmd:
                    self.children.add(int(pid))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def negbench(args: list[str], env: dict | None = None, watch: CmdlineWatch | None = None,
             cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``negbench ARGS`` in a process of its own (its own argv holds what the user typed)."""
    p = subprocess.Popen([sys.executable, "-m", "negbench.harness.cli", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})}, cwd=cwd)
    if watch is not None:
        watch.exclude.add(p.pid)  # the user typed it on this one: its children must not show it
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def everything_recorded(tracking: str, experiments: list[str], workdir: Path) -> str:
    """Every tag, param and run name of the experiments' runs, and the text of every file
    under ``workdir`` (the commands' working directory: mlflow's artifact store ``./mlruns``
    for a database tracking store, the reports)."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=tracking)
    parts = []
    for name in experiments:
        exp = c.get_experiment_by_name(name)
        assert exp is not None, name
        parts.append(repr(exp.tags))
        runs = c.search_runs([exp.experiment_id], max_results=1000)
        assert runs, name
        for r in runs:
            parts += [repr(r.data.tags), repr(r.data.params), repr(r.info.run_name)]
    files = [f for f in workdir.rglob("*") if f.is_file()]
    assert any(f.name == "items.json" for f in files)  # the runs' artifacts are there
    parts += [f.read_bytes().decode(errors="replace") for f in files]
    return "\n".join(parts)


SPEC = '''
name = "secret-ablation"
suites = ["digits"]
strategies = ["in-batch", "random"]
seeds = 1
budget = "samples=768"
[overrides]
"batch_size" = 128
"eval.linear_epochs" = 10
'''


def test_no_password_in_children_tags_artifacts_reports_or_errors(server, tmp_path):
    tracking = url(server, "mlflow")
    # tune: the password typed on its command line, in --storage and --tracking-uri
    with CmdlineWatch(PASSWORD) as tune_watch:
        tune = negbench(["tune", "--suite", "digits", "--strategy", "in-batch", "--trials", "2",
                         "--budget", "samples=768", "--set", "batch_size=128",
                         "--set", "eval.linear_epochs=10", "--pruner", "none",
                         "--storage", url(server, "optuna"), "--tracking-uri", tracking,
                         "--experiment", "secret-tune", "--workers", "2", "--no-progress"],
                        watch=tune_watch, cwd=tmp_path)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert len(tune_watch.children) >= 2  # the local workers were seen running
    assert not tune_watch.leaks, tune_watch.leaks
    assert tune_watch.exclude <= set(tune_watch.seen)  # it saw the password where it is typed
    # ablate: the queue and tracking URLs typed on its command line too
    spec = write(tmp_path, SPEC)
    with CmdlineWatch(PASSWORD) as ablate_watch:
        ablate = negbench(["ablate", spec, "--queue", url(server, "queue"), "--tracking-uri",
                           tracking, "--workers", "2", "--no-progress", "--report"],
                          watch=ablate_watch, cwd=tmp_path)
    assert ablate.returncode == 0, ablate.stderr[-3000:]
    assert len(ablate_watch.children) >= 2
    assert not ablate_watch.leaks, ablate_watch.leaks
    assert ablate_watch.exclude <= set(ablate_watch.seen)
    for p in (tune, ablate):
        assert PASSWORD not in p.stdout + p.stderr
    # the command was recorded, with its password masked
    recorded = everything_recorded(tracking, ["secret-tune", "secret-ablation"], tmp_path)
    assert PASSWORD not in recorded
    assert "--storage postgresql+psycopg2://negbench:***@127.0.0.1" in recorded
    # the report: HTML, Markdown, JSON
    report = tmp_path / "negbench-runs" / "reports" / "secret-ablation"
    files = {f.name: f.read_text() for f in report.iterdir() if f.suffix in (".html", ".md",
                                                                             ".json")}
    assert {"index.html", "report.md", "report.json"} <= set(files)
    for name, text in files.items():
        assert PASSWORD not in text, name
    assert "negbench:***@127.0.0.1" in files["report.md"]  # the provenance line, masked


def test_urls_from_the_environment_and_pgpass(server, tmp_path):
    """$NEGBENCH_STORAGE and $MLFLOW_TRACKING_URI instead of options; then PostgreSQL's own
    password file, so that no URL holds the password at all."""
    spec = write(tmp_path, SPEC.replace("secret-ablation", "from-env"))
    with CmdlineWatch(PASSWORD) as watch:
        env_run = negbench(["worker", spec, "--no-progress"],
                           env={"NEGBENCH_STORAGE": url(server, "queue"),
                                "MLFLOW_TRACKING_URI": url(server, "mlflow")}, watch=watch,
                           cwd=tmp_path)
    assert env_run.returncode == 0, env_run.stderr[-3000:]
    assert not watch.leaks and PASSWORD not in env_run.stdout + env_run.stderr
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{server}:*:negbench:{PASSWORD}\n")
    pgpass.chmod(0o600)
    plain = negbench(["report", "--experiment", "from-env", "--tracking-uri",
                      url(server, "mlflow", None), "--out", str(tmp_path / "r")],
                     env={"PGPASSFILE": str(pgpass)}, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    # without the file, the same URL is refused, and the error line holds no password
    refused = negbench(["worker", spec, "--storage", url(server, "queue", "wrong-" + PASSWORD)],
                       cwd=tmp_path)
    assert refused.returncode == 2
    assert PASSWORD not in refused.stderr and refused.stderr.count("\n") == 1
    assert "negbench:***@127.0.0.1" in refused.stderr


def test_worker_without_any_storage_is_one_line(tmp_path):
    spec = write(tmp_path, SPEC)
    env = {k: v for k, v in os.environ.items() if k != "NEGBENCH_STORAGE"}
    p = subprocess.run([sys.executable, "-m", "negbench.harness.cli", "worker", spec],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "$NEGBENCH_STORAGE" in p.stderr and p.stderr.count("\n") == 1


def test_a_bad_tracking_uri_with_a_password_is_masked_in_its_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "negbench.harness.cli", "run", "--suite", "digits",
                        "--strategy", "in-batch", "--tracking-uri", f"bogus://u:{PASSWORD}@h/x"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "bogus://u:***@h/x" in p.stderr
    assert PASSWORD not in p.stderr
