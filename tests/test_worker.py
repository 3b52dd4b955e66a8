"""`negbench worker`: an ablation's work queue in optuna's RDB storage, shared by processes.

The main test starts a real, throw-away PostgreSQL server (Debian's `postgresql`, which
`scripts/bootstrap.sh --dev` installs as root) and two worker processes that share it; the
others use a sqlite file as the queue, which optuna's RDB storage also serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import experiment_runs, mlflow_uri, postgres_server
from conftest import write_spec as write
from mlflow import MlflowClient

from negbench.harness import worker as W
from negbench.harness.cli import main
from negbench.harness.spec import load_spec

GRID = '''
name = "grid"
suites = ["digits"]
strategies = ["in-batch", "random", "debiased", "hcl"]
seeds = 2
budget = "samples=1024"
[overrides]
"batch_size" = 128
"eval.linear_epochs" = 10
'''


def finished_runs(uri: str, experiment: str) -> list:
    return experiment_runs(uri, experiment, "FINISHED")


def cells_of(runs: list) -> list[str]:
    return sorted(r.data.tags["negbench.cell"] for r in runs)


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def postgres_url():
    """A database on a real PostgreSQL server: $NEGBENCH_TEST_POSTGRES if set, else a throw-away
    server started here (conftest.postgres_server)."""
    if os.environ.get("NEGBENCH_TEST_POSTGRES"):
        yield os.environ["NEGBENCH_TEST_POSTGRES"]
        return
    with postgres_server(databases=("queue",)) as port:
        yield f"postgresql+psycopg2://negbench@127.0.0.1:{port}/queue"



def test_two_workers_on_postgresql_split_the_grid_without_overlap(tmp_path, postgres_url):
    spec = write(tmp_path, GRID)
    uri = mlflow_uri(tmp_path)
    main(["ablate", spec, "--dry-run", "--tracking-uri", uri])  # creates the mlflow store once
    env = dict(os.environ, NEGBENCH_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "negbench.harness.cli", "worker", spec, "--storage", postgres_url,
           "--tracking-uri", uri, "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(outs)

    cells = load_spec(spec).cells()
    runs = finished_runs(uri, "grid")
    assert cells_of(runs) == sorted(c.key for c in cells)  # every cell, each exactly once
    by_worker: dict[str, set] = {}
    for r in runs:
        tags = r.data.tags
        by_worker.setdefault(tags["negbench.worker"], set()).add(tags["negbench.cell"])
    assert len(by_worker) == 2, f"one worker ran everything: {by_worker}"  # the grid was split
    a, b = by_worker.values()
    assert not a & b and len(a) + len(b) == len(cells)

    import optuna

    study = optuna.load_study(study_name=W.study_name(load_spec(spec), cells),
                              storage=postgres_url)
    done = [t.params["cell"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(done) == sorted(c.key for c in cells)  # no cell completed twice in the queue
    assert sorted(f"ran {len(s)} cell(s)" in "".join(outs) for s in (a, b)) == [True, True]


# --------------------------------------------------------------------------- sqlite queue
SMALL = GRID.replace('["in-batch", "random", "debiased", "hcl"]', '["in-batch", "random"]')


def test_a_worker_completes_the_grid_and_a_second_runs_nothing(tmp_path, capsys):
    spec, uri = write(tmp_path, SMALL), mlflow_uri(tmp_path)
    queue = f"sqlite:///{tmp_path / 'queue.db'}"
    args = ["worker", spec, "--storage", queue, "--tracking-uri", uri, "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 of 4 cells completed" in out and "budget audit: all 4 completed runs" in out
    assert main(args) == 0
    assert "ran 0 cell(s)" in capsys.readouterr().err
    assert cells_of(finished_runs(uri, "grid")) == sorted(c.key for c in load_spec(spec).cells())


def test_cells_done_by_ablate_are_not_run_again(tmp_path):
    uri = mlflow_uri(tmp_path)
    first = write(tmp_path, SMALL.replace('seeds = 2', 'seeds = 1'), "first.toml")
    assert main(["ablate", first, "--tracking-uri", uri, "--no-progress"]) == 0
    before = {r.data.tags["negbench.cell"]: r.info.run_id for r in finished_runs(uri, "grid")}
    spec = write(tmp_path, SMALL)
    assert main(["worker", spec, "--storage", f"sqlite:///{tmp_path / 'q.db'}",
                 "--tracking-uri", uri, "--no-progress"]) == 0
    runs = finished_runs(uri, "grid")
    assert cells_of(runs) == sorted(c.key for c in load_spec(spec).cells())
    after = {r.data.tags["negbench.cell"]: r.info.run_id for r in runs}
    assert all(after[k] == v for k, v in before.items())  # the ablate runs stand, not repeated
    # the worker ran seed 1 only (ablate's runs came from its own queue, of the first grid)
    queue = W.study_name(load_spec(spec), load_spec(spec).cells())
    assert sum(r.data.tags.get(W.TRIAL_TAG, "").startswith(f"{queue}#") for r in runs) == 2


def test_a_dead_workers_cell_is_retried_after_the_grace_period(tmp_path):
    spec = load_spec(write(tmp_path, SMALL))
    cells, uri = spec.cells(), mlflow_uri(tmp_path)
    queue = W.open_queue(spec, cells, f"sqlite:///{tmp_path / 'q.db'}", uri, heartbeat=1,
                         grace=2)
    from optuna.distributions import CategoricalDistribution

    # a worker that took a cell, beat once and died
    dead = queue.study.ask({W.PARAM: CategoricalDistribution(queue.keys)})
    queue.study._storage.record_heartbeat(dead._trial_id)
    time.sleep(3.5)
    ran = W.work(spec, cells, queue, tracking_uri=uri, poll=0.5)
    assert ran == len(cells)
    assert cells_of(finished_runs(uri, "grid")) == sorted(c.key for c in cells)
    states = {t.number: t.state.name for t in queue.study.trials}
    assert states[dead.number] == "FAIL"
    retried = [t for t in queue.study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == dead.params


def test_a_failed_cell_is_recorded_and_retried_by_the_next_worker(tmp_path, capsys):
    uri = mlflow_uri(tmp_path)
    spec = write(tmp_path, SMALL + '[strategy.random]\n"optim.lr" = 1e12\n'
                                   '"objective.temperature" = 0.01\n')
    args = ["worker", spec, "--storage", f"sqlite:///{tmp_path / 'q.db'}", "--tracking-uri", uri,
            "--no-progress"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "failed digits/random/seed 0" in out and "2 of 4 cells completed" in out
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("grid")
    failed = client.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 2 and all("loss is" in r.data.tags["failure"] for r in failed)
    assert main(args) == 1
    assert "2 failed cell(s) queued again" in capsys.readouterr().err
    assert len(client.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")) == 4


def test_an_unusable_storage_is_one_line_and_status_2(tmp_path, capsys):
    spec = write(tmp_path, SMALL)
    code = main(["worker", spec, "--storage", "nosuchdb://x", "--tracking-uri",
                 mlflow_uri(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot open the work-queue storage 'nosuchdb://x'" in err
