"""`negbench submit`: N `negbench worker` jobs through submitit.

The main test runs two real jobs with submitit's local executor on a 4-cell digits grid and
reads the tracking store. Slurm is not here: its tests put an `sbatch` on PATH that records the
script it is given and its environment and answers as sbatch does ("Submitted batch job N"), so
they check the job array's #SBATCH lines and that the URLs travel in the environment alone; one
then runs the job submitit pickled, as a Slurm node would, against a PostgreSQL queue whose URL
holds a password.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import experiment_runs, mlflow_uri, postgres_server
from conftest import write_spec as write

from negbench.harness.cli import main

GRID = '''
name = "subgrid"
suites = ["digits"]
strategies = ["in-batch", "random"]
seeds = 2
budget = "samples=512"
[overrides]
"batch_size" = 32
"eval.linear_epochs" = 10
'''
ONE = GRID.replace('["in-batch", "random"]', '["in-batch"]').replace("seeds = 2", "seeds = 1")


@pytest.fixture(autouse=True)
def no_urls_from_outside(monkeypatch):
    """The tests name their stores; a developer's own $NEGBENCH_STORAGE, $MLFLOW_TRACKING_URI
    and $SBATCH_EXPORT stay out."""
    for k in ("NEGBENCH_STORAGE", "MLFLOW_TRACKING_URI", "SBATCH_EXPORT"):
        monkeypatch.delenv(k, raising=False)


def cells_of(runs: list) -> list[str]:
    return sorted(r.data.tags["negbench.cell"] for r in runs)


def test_two_local_jobs_complete_the_grid_each_cell_once(tmp_path, capsys):
    from negbench.harness.spec import load_spec

    spec, uri = write(tmp_path, GRID), mlflow_uri(tmp_path)
    args = ["submit", spec, "--executor", "local", "--jobs", "2", "--wait", "--no-progress",
            "--tracking-uri", uri]
    assert main(args) == 0
    out, err = capsys.readouterr()
    runs = experiment_runs(uri, "subgrid")
    assert [r.info.status for r in runs] == ["FINISHED"] * 4  # nothing failed, nothing twice
    assert cells_of(runs) == sorted(c.key for c in load_spec(spec).cells())
    assert all(r.data.tags["negbench.command"].startswith("negbench submit ") for r in runs)
    workers = {r.data.tags["negbench.worker"] for r in runs}
    assert len(workers) == 2, f"one job ran every cell: {workers}"
    # each job's result names its worker, and the runs it made are its share
    for w in workers:
        n = sum(r.data.tags["negbench.worker"] == w for r in runs)
        assert f"worker {w} ran {n} cell(s), exit status 0" in out
    assert "4 of 4 cells completed" in out and "negbench report --experiment subgrid" in out
    assert "4 of 4 cells completed; 0 of 2 job(s) running" in err  # the progress line
    # the queue is ablate's own, beside the tracking store; the logs beside it too
    assert f"sqlite:///{tmp_path / 'queue.db'}" in out
    logs = sorted(p.name for p in (tmp_path / "submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2

    assert main(args) == 0  # a second submit finds every cell done: nothing is submitted
    assert "nothing to submit" in capsys.readouterr().out
    assert len(list((tmp_path / "submitit").glob("*/*_0_log.out"))) == 2
    assert len(experiment_runs(uri, "subgrid")) == 4


# --------------------------------------------------------------------------- bad input
def test_an_unknown_executor_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["submit", write(tmp_path, GRID), "--executor", "pbs"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'pbs'" in err


@pytest.mark.parametrize("opts,message", [
    (["--jobs", "0"], "--jobs must be >= 1; got 0"),
    (["--time", "0"], "--time must be >= 1"),
    (["--slurm-option", "=x"], "--slurm-option '=x': expected KEY=VALUE"),
])
def test_bad_options_are_one_line(tmp_path, capsys, opts, message):
    spec = write(tmp_path, GRID)
    assert main(["submit", spec, "--executor", "local", *opts,
                 "--tracking-uri", mlflow_uri(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was opened


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no Slurm on it
    assert main(["submit", write(tmp_path, GRID), "--jobs", "2",
                 "--tracking-uri", mlflow_uri(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("negbench submit: error: --executor slurm needs Slurm's sbatch and srun on "
                   "PATH (submit from a login node of the cluster), or use --executor local")


def test_a_missing_submitit_names_the_extra(tmp_path):
    code = ("import sys\nsys.modules['submitit'] = None  # as if it were not installed\n"
            "from negbench.harness.cli import main\n"
            f"raise SystemExit(main(['submit', {write(tmp_path, GRID)!r}, '--executor', "
            f"'local', '--tracking-uri', {mlflow_uri(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("negbench submit: error: submitit is not installed; it comes "
                                "with the submit extra: pip install 'negbench[submit]'")


def test_help_imports_nothing_heavy():
    heavy = ("torch", "mlflow", "optuna", "pandas", "submitit")
    code = ("import sys\nfrom negbench.harness.cli import main\ntry:\n"
            "    main(['submit', '--help'])\nexcept SystemExit:\n    pass\n"
            f"print('imported:' + ','.join(m for m in {heavy!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--array-parallelism" in r.stdout and "--slurm-option" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "imported:"


# --------------------------------------------------------------------------- Slurm
SBATCH = """#!/bin/sh
# a stand-in for Slurm's sbatch: keeps the script, its argv and environment, answers as sbatch
cp "$1" "$SBATCH_RECORD/script.sh"
echo "$@" > "$SBATCH_RECORD/argv"
env > "$SBATCH_RECORD/env"
echo "Submitted batch job 4242"
"""


@pytest.fixture
def sbatch(tmp_path, monkeypatch) -> Path:
    """Slurm's commands on PATH (sbatch records what it got in the returned folder)."""
    bin_, record = tmp_path / "bin", tmp_path / "sbatch"
    bin_.mkdir()
    record.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_RECORD", str(record))
    return record


def recorded_env(record: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (record / "env").read_text().splitlines()
                if "=" in line)


def test_slurm_jobs_are_one_array_with_the_clusters_options(tmp_path, sbatch, capsys):
    spec, uri = write(tmp_path, GRID), mlflow_uri(tmp_path)
    queue = f"sqlite:///{tmp_path / 'q.db'}"
    assert main(["submit", spec, "--jobs", "2", "--storage", queue, "--tracking-uri", uri,
                 "--partition", "gpu", "--time", "30", "--gpus-per-job", "2",
                 "--cpus-per-job", "4", "--mem", "8G", "--array-parallelism", "1",
                 "--setup", "module load cuda", "--slurm-option", "account=proj",
                 "--slurm-option", "exclusive"]) == 0
    out, err = capsys.readouterr()
    script = (sbatch / "script.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH --array=0-1%1",
                 "#SBATCH --account=proj", "#SBATCH --exclusive", "#SBATCH --nodes=1",
                 "#SBATCH --job-name=negbench-subgrid", "module load cuda"):
        assert line in script.splitlines(), f"{line!r} not in\n{script}"
    # the URLs went to sbatch in its environment, and nowhere else
    env = recorded_env(sbatch)
    assert env["NEGBENCH_STORAGE"] == queue and env["MLFLOW_TRACKING_URI"] == uri
    assert "NEGBENCH_STORAGE" not in os.environ  # this process's environment is as it was
    for text in (script, (sbatch / "argv").read_text()):
        assert str(tmp_path / "q.db") not in text and "mlflow.db" not in text
    assert "submitted 2 slurm job(s)" in out and "4242_0, 4242_1" in out
    assert "squeue -j 4242" in out and "negbench report --experiment subgrid" in out
    assert "warning: the work queue and the tracking store are sqlite files" in err
    pickles = sorted(tmp_path.glob("submitit/*/*_submitted.pkl"))
    assert [p.name for p in pickles] == ["4242_0_submitted.pkl", "4242_1_submitted.pkl"]
    assert not experiment_runs(uri, "subgrid")  # submitted, not run: --no-wait is the default


def test_sbatch_export_none_is_refused_and_a_list_gets_the_urls(tmp_path, sbatch, capsys,
                                                                 monkeypatch):
    spec, uri = write(tmp_path, GRID), mlflow_uri(tmp_path)
    base = ["submit", spec, "--tracking-uri", uri, "--storage", f"sqlite:///{tmp_path}/q.db"]
    assert main([*base, "--slurm-option", "export=NONE"]) == 2
    assert "export=NONE would keep the queue and tracking URLs" in capsys.readouterr().err
    assert main([*base, "--slurm-option", "export=PATH,HOME"]) == 0
    script = (sbatch / "script.sh").read_text()
    urls = "NEGBENCH_STORAGE,MLFLOW_TRACKING_URI"
    assert f"#SBATCH --export=PATH,HOME,{urls}" in script.splitlines()
    assert recorded_env(sbatch)["SBATCH_EXPORT"] == f"PATH,HOME,{urls}"
    # $SBATCH_EXPORT outranks the script's #SBATCH lines: it is the one extended
    monkeypatch.setenv("SBATCH_EXPORT", "HOME")
    assert main([*base, "--jobs", "2"]) == 0
    assert recorded_env(sbatch)["SBATCH_EXPORT"] == f"HOME,{urls}"
    assert os.environ["SBATCH_EXPORT"] == "HOME"


def test_a_slurm_job_runs_its_worker_with_a_password_only_in_its_environment(
        tmp_path, sbatch, capsys, monkeypatch):
    """The job submitit pickled, run as a node would run it, takes the cell from a PostgreSQL
    queue whose password reached it through sbatch's environment alone."""
    from submitit.core.utils import DelayedSubmission

    secret = "s3cr3t-pw"
    with postgres_server(databases=("queue",), password=secret) as port:
        storage = f"postgresql+psycopg2://negbench:{secret}@127.0.0.1:{port}/queue"
        monkeypatch.setenv("NEGBENCH_STORAGE", storage)
        spec, uri = write(tmp_path, ONE), mlflow_uri(tmp_path)
        assert main(["submit", spec, "--jobs", "3", "--tracking-uri", uri]) == 0
        out, err = capsys.readouterr()
        assert "submitting 1 job(s), not 3: only 1 cell(s) left to run" in err
        assert "127.0.0.1" in out and secret not in out + err
        script = (sbatch / "script.sh").read_text()
        assert "--array" not in script  # one job, not an array
        (pickle,) = tmp_path.glob("submitit/4242/4242_submitted.pkl")
        for text in (script, (sbatch / "argv").read_text()):
            assert secret not in text
        assert secret.encode() not in pickle.read_bytes()
        env = recorded_env(sbatch)
        assert env["NEGBENCH_STORAGE"] == storage

        # the node: only what sbatch exported tells the job where the queue and runs are
        monkeypatch.delenv("NEGBENCH_STORAGE")
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
        for k in ("NEGBENCH_THREADS", "OMP_NUM_THREADS"):  # restored after the test
            monkeypatch.setenv(k, "")
            monkeypatch.delenv(k)
        for k in ("NEGBENCH_STORAGE", "MLFLOW_TRACKING_URI"):
            monkeypatch.setenv(k, env[k])
        threads = torch.get_num_threads()
        try:
            result = DelayedSubmission.load(pickle).result()
        finally:
            torch.set_num_threads(threads)
        assert result["exit"] == 0 and os.environ["NEGBENCH_THREADS"] == "1"
    (run,) = experiment_runs(uri, "subgrid")
    assert run.info.status == "FINISHED" and run.data.tags["negbench.worker"] == result["worker"]
    assert secret not in " ".join(run.data.tags.values())
