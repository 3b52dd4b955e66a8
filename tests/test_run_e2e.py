"""End to end: `negbench run` on digits writes an mlflow run that mlflow reads back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.runner import run
from negbench.harness.tracking import FINAL_METRICS

TIMING = ("wall_seconds", "eval_seconds", "floor_seconds", "samples_per_second", "peak_mem_mb")


def _search(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["negbench"])


def test_negbench_run_is_tracked_in_mlflow(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "negbench.harness.cli", "run", "--suite", "digits", "--strategy",
         "in-batch", "--seed", "3", "--budget", "samples=1024", "--set", "batch_size=128",
         "--set", "eval.linear_epochs=30", "--tracking-uri", uri, "--json", "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # stdout is exactly one JSON object
    df = _search(uri)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["run_id"] == printed["run_id"] and row["status"] == "FINISHED"
    for key in FINAL_METRICS:
        assert f"metrics.{key}" in df.columns, key
        assert row[f"metrics.{key}"] == pytest.approx(printed[key], rel=1e-6), key
    assert row["metrics.samples_seen"] == 1024
    assert row["params.optim.lr"] == "0.002" and row["params.strategy.name"] == "in-batch"
    assert row["params.budget.amount"] == "1024.0" and row["params.batch_size"] == "128"
    for tag in ("strategy", "suite", "seed", "budget", "objective", "git_commit", "device",
                "version.torch", "version.mlflow"):
        assert row[f"tags.{tag}"], tag
    assert row["tags.seed"] == "3" and row["tags.budget"] == "samples=1024"
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(printed["run_id"], "fnr")
    assert len(history) >= 2  # the interval history plus the final value
    arts = {a.path for a in client.list_artifacts(printed["run_id"])}
    assert {"config.json", "fnr_deciles.json"} <= arts
    # nothing written outside the tracking store given
    assert not (tmp_path / "negbench-runs").exists()


def test_same_seed_gives_identical_final_metrics():
    cfg = build_config("digits", "random", seed=7, budget=BudgetConfig("samples", 1024),
                       sets={"batch_size": "128", "eval.linear_epochs": "30"})
    a, b = run(cfg, track=False).metrics, run(cfg, track=False).metrics
    for key in a:
        if not key.startswith("time_") and key not in TIMING:
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key
    c = run(build_config("digits", "random", seed=8, budget=BudgetConfig("samples", 1024),
                         sets={"batch_size": "128", "eval.linear_epochs": "30"}),
            track=False).metrics
    assert c["fnr"] != a["fnr"]  # another seed is another run


def test_a_failed_run_is_recorded_with_its_reason(tmp_path: Path):
    from negbench.harness.runner import RunFailed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config("digits", "in-batch", budget=BudgetConfig("samples", 1024),
                       sets={"batch_size": "128", "optim.lr": "1e30", "optim.warmup": "0",
                             "log_every": "2"})
    with pytest.raises(RunFailed, match="diverged"):
        run(cfg, tracking_uri=uri)
    df = _search(uri)
    assert list(df["status"]) == ["FAILED"]
    assert "loss is nan" in df.iloc[0]["tags.failure"].lower()


def test_a_crashed_run_keeps_its_curve(tmp_path: Path):
    """The training curve is buffered between sends to the store (every
    tracking.SEND_EVERY_S seconds); a run that fails keeps every point logged before it."""
    from negbench.harness import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config("digits", "in-batch", budget=BudgetConfig("samples", 4096),
                       sets={"batch_size": "128", "log_every": "2"})
    seen = []

    def crash_at_third(point):
        seen.append(point["samples_seen"])
        if len(seen) == 3:
            raise RuntimeError("the user's callback broke")

    assert tracking.SEND_EVERY_S >= 5  # none of the three points is sent before the crash
    with pytest.raises(RuntimeError, match="callback broke"):
        run(cfg, tracking_uri=uri, on_log=crash_at_third)
    df = _search(uri)
    assert list(df["status"]) == ["FAILED"]
    hist = mlflow.MlflowClient(uri).get_metric_history(df.iloc[0]["run_id"], "loss")
    assert sorted(m.step for m in hist) == seen == [256, 512, 768]


def test_background_metrics_wait_for_send(tmp_path: Path):
    from negbench.harness.tracking import Tracker

    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "buffer")
    t.start("r", {}, {})
    t.log_metrics({"loss": 1.0}, step=1, background=True)
    t.log_metrics({"loss": 0.5}, step=2, background=True)
    t.log_metrics({"acc": 0.9}, step=2)  # synchronous: stored at once
    client = mlflow.MlflowClient(t.uri)
    assert client.get_metric_history(t.run_id, "loss") == []
    assert [m.value for m in client.get_metric_history(t.run_id, "acc")] == [0.9]
    t.flush()
    assert [(m.step, m.value) for m in client.get_metric_history(t.run_id, "loss")] == [
        (1, 1.0), (2, 0.5)]
    t.end()
