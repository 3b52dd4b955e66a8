"""Bad input ends with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from negbench.harness.cli import main

BASE = ["run", "--suite", "digits", "--strategy", "in-batch", "--no-progress"]


@pytest.mark.parametrize("argv,needle", [
    (["run", "--suite", "digit", "--strategy", "in-batch"], "did you mean 'digits'"),
    (["run", "--suite", "digits", "--strategy", "semihard"], "unknown strategy 'semihard'"),
    (BASE + ["--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (BASE + ["--set", "strategy.nope=1"], "unknown key 'strategy.nope'"),
    (BASE + ["--set", "optim.lr=fast"], "'fast' is not a valid float"),
    (BASE + ["--set", "batch_size=2.5"], "'2.5' is not a valid int"),
    (BASE + ["--set", "optim"], "expects key=value"),
    (BASE + ["--seed", "abc"], "invalid int value"),
    (BASE + ["--budget", "samples=0"], "must be > 0"),
    (BASE + ["--budget", "samples=-100"], "must be > 0"),
    (BASE + ["--budget", "lightyears=3"], "budget kind must be one of"),
    (["run", "--suite", "fashion-mnist", "--strategy", "in-batch", "--data-dir",
      "/nonexistent/dir"], "not a readable directory"),
    (BASE + ["--device", "cuda:7"], "CUDA is not available"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_empty_data_dir_says_what_is_missing(tmp_path, capsys):
    assert main(["run", "--suite", "fashion-mnist", "--strategy", "in-batch", "--data-dir",
                 str(tmp_path)]) == 2
    assert "no Fashion-MNIST idx files" in capsys.readouterr().err


def test_console_script_help_and_error():
    out = subprocess.run([sys.executable, "-m", "negbench.harness.cli", "run", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--budget" in out.stdout and "--json" in out.stdout
    assert "--plugin MODULE_OR_FILE" in out.stdout  # the option negbench hoists from anywhere
    bad = subprocess.run([sys.executable, "-m", "negbench.harness.cli", "run", "--suite", "nope",
                          "--strategy", "in-batch"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_every_subcommand_help_names_plugin_and_keeps_its_own_epilog(capsys):
    for argv, own in ((["tune"], "Search ranges"), (["submit"], "On a cluster"),
                      (["check", "strategy"], None), (["report"], None)):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "--plugin MODULE_OR_FILE (repeatable, anywhere on the line)" in out, argv
        assert own is None or own in out, argv


def test_listing_commands(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "in-batch" in out and "random" in out
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "present" in out
    assert "fashion-mnist: --set suite.classes={10, 5, 2}" in out


def test_demo_runs_strategies_and_prints_the_table(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["demo", "--strategies", "in-batch,random", "--budget", "samples=512",
                 "--set", "batch_size=128", "--set", "eval.linear_epochs=5",
                 "--tracking-uri", uri, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "every strategy under one budget (samples=512" in err
    assert "in-batch" in err and "random" in err and "kNN acc" in err
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["negbench-demo"])
    assert sorted(runs["tags.strategy"]) == ["in-batch", "random"]
    assert set(runs["status"]) == {"FINISHED"}


def test_demo_rejects_an_unknown_strategy_before_running(capsys):
    assert main(["demo", "--strategies", "in-batch,nope", "--no-progress"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["bogus://x", "s3://bucket/runs"])
def test_an_unknown_tracking_uri_scheme_is_one_line_and_status_2(uri):
    bad = subprocess.run([sys.executable, "-m", "negbench.harness.cli", "run", "--suite",
                          "digits", "--strategy", "in-batch", "--tracking-uri", uri],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    assert repr(uri) in bad.stderr and "sqlite:///PATH" in bad.stderr  # what is allowed


def test_an_unknown_tracking_uri_from_the_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://y")
    assert main(BASE + ["--budget", "samples=256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bogus://y' is not a tracking URI" in err, err


HEAVY = ("torch", "mlflow", "optuna", "pandas")


def _imported_by(argv: list[str]) -> set[str]:
    """Which of HEAVY a fresh ``negbench ARGV`` process imports (--help ends in SystemExit)."""
    code = ("import sys\nfrom negbench.harness.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), "
            "file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("imported:")]
    return set(filter(None, line[len("imported:"):].split(",")))


@pytest.mark.parametrize("argv", [["--help"], ["tune", "--help"], ["report", "--help"],
                                  ["ablate", "--help"]])
def test_help_imports_neither_torch_nor_mlflow_optuna_pandas(argv):
    assert _imported_by(argv) == set()


def test_listing_strategies_imports_torch_but_not_the_trackers():
    assert _imported_by(["strategies"]) == {"torch"}


def test_sigterm_ends_the_run_killed_with_one_line_and_143(tmp_path):
    """`kill` (or a scheduler's stop) is handled like Ctrl-C: the mlflow run is ended KILLED,
    not left RUNNING forever, and the command says so in one line."""
    import signal
    import time

    from conftest import experiment_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    p = subprocess.Popen([sys.executable, "-m", "negbench.harness.cli", "run", "--suite",
                          "digits", "--strategy", "in-batch", "--budget", "samples=10000000",
                          "--tracking-uri", uri, "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not experiment_runs(uri, "negbench", "RUNNING"):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.5)
        time.sleep(1.0)  # inside the training loop
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1] == "negbench run: terminated" and "Traceback" not in err
    (r,) = experiment_runs(uri, "negbench")
    assert r.info.status == "KILLED"
