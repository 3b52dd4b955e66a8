"""`negbench tune`: real optuna studies (sqlite storage under tmp_path) of real digits runs with a
tiny budget, tracked in a real sqlite mlflow store; export, and an ablation spec reading it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import experiment_runs
from mlflow import MlflowClient
from optuna.trial import TrialState

from negbench import strategies
from negbench.harness import ablate as A
from negbench.harness import evaluate
from negbench.harness import tune as T
from negbench.harness.cli import main as negbench
from negbench.harness.config import BudgetConfig, ConfigError, build_config
from negbench.harness.runner import HEALTH_TAG, Trainer
from negbench.harness.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget", "samples=1500", "--set", "batch_size=128", "--set", "eval.linear_epochs=10"]


def urls(d: Path) -> tuple[str, str]:
    """(optuna storage, mlflow tracking URI) under ``d``."""
    return f"sqlite:///{d / 'optuna.db'}", f"sqlite:///{d / 'mlflow.db'}"


def tune_args(d: Path, strategy: str, trials: int, *extra: str, tiny=TINY) -> list[str]:
    storage, tracking = urls(d)
    return ["--suite", "digits", "--strategy", strategy, "--trials", str(trials), *tiny,
            "--storage", storage, "--tracking-uri", tracking, "--no-progress", *extra]


def study(d: Path, strategy: str, prefix: str = "tune") -> optuna.Study:
    return optuna.load_study(study_name=f"{prefix}:digits:{strategy}", storage=urls(d)[0])


def mlflow_runs(d: Path, experiment: str = "tune") -> list:
    return experiment_runs(urls(d)[1], experiment)


def trial_runs(d: Path, study_name: str) -> dict[int, object]:
    return {int(r.data.tags[T.TAG_TRIAL]): r for r in mlflow_runs(d)
            if r.data.tags.get(T.TAG_STUDY) == study_name and T.TAG_TRIAL in r.data.tags}


def base_cfg(strategy: str):
    return build_config("digits", strategy, sets={"eval.split": "val"})


# --------------------------------------------------------------------------- search space
@pytest.mark.parametrize("name", strategies.names())
def test_every_strategy_has_a_space_holding_its_default(name):
    cfg = base_cfg(name)
    space = T.search_space(cfg)
    declared = {f"strategy.{k}" for k in type(cfg.strategy_cfg).space}
    assert set(space) == {"optim.lr", "optim.weight_decay", "objective.temperature"} | declared
    for key in ("optim.lr", "optim.weight_decay", "objective.temperature"):
        assert space[key].log and space[key].low < cfg.flat()[key] < space[key].high
    defaults = T.default_params(cfg, space)
    assert all(T.inside(v, space[k]) for k, v in defaults.items())
    fixed = T.search_space(cfg, fixed=["optim.lr", *declared])  # --set keys are not searched
    assert set(fixed) == {"optim.weight_decay", "objective.temperature"}


def test_triplet_searches_its_margin_instead_of_a_temperature():
    cfg = build_config("digits", "semi-hard", sets={"objective.name": "triplet"})
    space = T.search_space(cfg)
    assert "objective.margin" in space and "objective.temperature" not in space


# --------------------------------------------------------------------------- one small study
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One hcl study of 5 trials (no pruning, so every trial runs to its end), run through the
    command with a listener on every split an evaluation reads."""
    d = tmp_path_factory.mktemp("small")
    seen: list[str] = []
    evaluate.split_listeners.append(seen.append)
    try:
        code = T.main(tune_args(d, "hcl", 5, "--pruner", "none"))
    finally:
        evaluate.split_listeners.remove(seen.append)
    return d, code, seen


def test_a_small_study_completes_with_its_best_inside_the_space(small):
    d, code, _ = small
    assert code == 0
    st = study(d, "hcl")
    trials = st.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    space = T.search_space(base_cfg("hcl"))
    assert set(st.best_params) == set(space)
    for t in trials:
        assert all(T.inside(v, space[k]) for k, v in t.params.items()), t.params
    # trial 0 is the default configuration, and the only one
    assert trials[0].user_attrs[T.ATTR_DEFAULT] is True
    assert trials[0].params == T.default_params(base_cfg("hcl"), space)
    assert sum(bool(t.user_attrs.get(T.ATTR_DEFAULT)) for t in trials) == 1
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5
    assert 0 < st.best_value <= 1


def test_each_trial_is_a_nested_mlflow_run_with_its_params_and_history(small):
    d, _, _ = small
    runs = mlflow_runs(d)
    parents = [r for r in runs if r.data.tags.get(T.ROLE_TAG) == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    st = study(d, "hcl")
    assert parent.data.metrics["best_val_knn_acc"] == pytest.approx(st.best_value)
    assert parent.data.metrics["trials_complete"] == 5
    by_trial = trial_runs(d, "tune:digits:hcl")
    assert sorted(by_trial) == [0, 1, 2, 3, 4]
    client = MlflowClient(tracking_uri=urls(d)[1])
    for t in st.get_trials():
        r = by_trial[t.number]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags[T.TAG_PRUNED] == "false" and r.info.status == "FINISHED"
        assert r.info.run_id == t.user_attrs[T.ATTR_RUN]
        for k, v in t.params.items():
            assert float(r.data.params[k]) == v  # the run trained with exactly the trial's values
        hist = client.get_metric_history(r.info.run_id, T.INTERMEDIATE)
        steps = sorted(m.step for m in hist)
        assert len(steps) == 4 and steps[-1] == 1500  # three checkpoints and the final value
        assert sorted(t.intermediate_values) == [25, 50, 75]
        assert max(hist, key=lambda m: m.step).value == pytest.approx(t.value)
        assert r.data.metrics["knn_acc"] == pytest.approx(t.value)


def test_tuning_never_evaluates_on_the_test_split(small):
    d, _, seen = small
    # 5 trials x (3 checkpoints + the final evaluation), and the untrained encoder's floors
    # once (the first trial measures them, the others reuse them): every one of them on val
    assert len(seen) == 21 and set(seen) == {"val"}
    params = [r.data.params for r in trial_runs(d, "tune:digits:hcl").values()]
    assert len(params) == 5 and all(p["eval.split"] == "val" for p in params)


def test_a_run_evaluated_on_val_does_not_hold_the_test_split():
    tr = Trainer(build_config("digits", "in-batch", sets={"eval.split": "val"}))
    assert tr.data.test is None and tr.data_on_device().test is None
    with pytest.raises(ValueError, match="withheld"):
        evaluate.read_split(tr.data_on_device(), "test")
    assert Trainer(build_config("digits", "in-batch")).data.test is not None


def test_the_final_table_reports_default_best_and_gain(small, tmp_path, capsys):
    d, _, _ = small
    # the study is complete: running the command again runs nothing and prints its table
    before = len(mlflow_runs(d))
    assert T.main(tune_args(d, "hcl", 5, "--pruner", "none")) == 0
    out = capsys.readouterr().out
    st = study(d, "hcl")
    default = st.trials[0].value
    assert "hcl" in out and "5 (5/0/0)" in out
    assert f"{default:.4f}" in out and f"{st.best_value:.4f}" in out
    assert f"{st.best_value - default:+.4f}" in out and "tuning wall-clock" in out
    assert len(mlflow_runs(d)) == before


# --------------------------------------------------------------------------- pruning
def test_a_huge_learning_rate_is_pruned(tmp_path):
    storage, tracking = urls(tmp_path)
    job = T.Job(suites=("digits",), strategies=("in-batch",), trials=2,
                budget=BudgetConfig("samples", 1500),
                sets={"batch_size": "128", "eval.linear_epochs": "10"}, prune_after=1,
                storage=storage, tracking_uri=tracking, enqueue=({"optim.lr": 5.0},))
    events = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna: the enqueued lr lies outside the range
        T.work(T.open_studies(job), events.append)
    default, bad = study(tmp_path, "in-batch").get_trials()
    assert default.state == TrialState.COMPLETE and sorted(default.intermediate_values) == [
        25, 50, 75]
    assert bad.params["optim.lr"] == 5.0
    assert bad.state == TrialState.PRUNED
    assert list(bad.intermediate_values) == [25]  # stopped at the first checkpoint
    assert bad.intermediate_values[25] < default.intermediate_values[25]
    run = trial_runs(tmp_path, "tune:digits:in-batch")[1]
    assert run.info.status == "KILLED" and run.data.tags[T.TAG_PRUNED] == "true"
    assert "failure" not in run.data.tags
    hist = MlflowClient(tracking_uri=tracking).get_metric_history(run.info.run_id,
                                                                  T.INTERMEDIATE)
    assert [m.value for m in hist] == [pytest.approx(bad.intermediate_values[25])]
    assert hist[0].step < 1500  # it did not spend its budget
    ends = [e for e in events if e["event"] == "end"]
    assert [e["state"] for e in ends] == ["complete", "pruned"]


def test_a_trial_skips_the_linear_probe_unless_set(small, tmp_path):
    """The objective reads kNN alone, so a trial runs no linear probe (it costs more than the
    kNN); ``--set eval.linear_epochs=N`` (the ``small`` study) brings it back."""
    storage, tracking = urls(tmp_path)
    job = T.Job(suites=("digits",), strategies=("in-batch",), trials=1,
                budget=BudgetConfig("samples", 1500), sets={"batch_size": "128"},
                pruner="none", storage=storage, tracking_uri=tracking)
    T.work(T.open_studies(job), lambda e: None)
    (trial,) = study(tmp_path, "in-batch").get_trials()
    assert trial.state == TrialState.COMPLETE and "val_linear_acc" not in trial.user_attrs
    run = trial_runs(tmp_path, "tune:digits:in-batch")[0]
    assert run.data.params["eval.linear_epochs"] == "0"
    assert "linear_acc" not in run.data.metrics and "floor_linear_acc" not in run.data.metrics
    assert run.data.metrics["knn_acc"] == pytest.approx(trial.value)
    assert run.data.tags[HEALTH_TAG] in ("ok", "degraded")  # judged on the kNN alone
    # the ``small`` study set 10 epochs: every trial has its probe
    for t in study(small[0], "hcl").get_trials():
        assert 0 < t.user_attrs["val_linear_acc"] <= 1
    # and a run outside tuning keeps it by default
    assert build_config("digits", "in-batch").eval.linear_epochs == 300
    with pytest.raises(ConfigError, match="linear_epochs must be >= 0"):
        build_config("digits", "in-batch", sets={"eval.linear_epochs": "-1"})


# --------------------------------------------------------------------------- resuming
def test_an_interrupted_study_resumes_its_count(tmp_path):
    args2 = tune_args(tmp_path, "in-batch", 2)
    assert T.main(args2) == 0  # a study of 2 trials, stopped there
    first = study(tmp_path, "in-batch").get_trials()
    assert len(first) == 2
    assert T.main(tune_args(tmp_path, "in-batch", 4)) == 0
    trials = study(tmp_path, "in-batch").get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    for old, new in zip(first, trials[:2], strict=True):  # kept, not run again
        assert (old.datetime_start, old.params, old.value) == (new.datetime_start, new.params,
                                                               new.value)
    assert sum(bool(t.user_attrs.get(T.ATTR_DEFAULT)) for t in trials) == 1
    runs = trial_runs(tmp_path, "tune:digits:in-batch")
    assert sorted(runs) == [0, 1, 2, 3]
    parents = [r for r in mlflow_runs(tmp_path) if r.data.tags.get(T.ROLE_TAG) == "study"]
    assert len(parents) == 1 and parents[0].data.tags["trials"] == "4"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {
        parents[0].info.run_id}
    # resumed, it drew what one uninterrupted process draws
    assert T.main(tune_args(tmp_path, "in-batch", 4, "--study", "once")) == 0
    once = study(tmp_path, "in-batch", "once").get_trials()
    assert [t.params for t in once] == [t.params for t in trials]


def test_a_resumed_study_must_keep_its_settings(tmp_path, capsys):
    assert T.main(tune_args(tmp_path, "in-batch", 1)) == 0
    capsys.readouterr()
    storage, tracking = urls(tmp_path)
    code = T.main(["--suite", "digits", "--strategy", "in-batch", "--trials", "2", "--budget",
                   "samples=3000", "--set", "batch_size=128", "--set", "eval.linear_epochs=10",
                   "--storage", storage, "--tracking-uri", tracking, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "budget" in err and "samples=1500" in err and "--study" in err
    assert len(study(tmp_path, "in-batch").trials) == 1


def test_a_killed_process_is_resumed_and_its_trial_replaced(tmp_path):
    # a budget long enough (a few seconds a trial) for the kill to land inside trial 1
    args = tune_args(tmp_path, "in-batch", 3, "--heartbeat", "1", "--pruner", "none",
                     tiny=["--budget", "samples=8000", *TINY[2:]])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "negbench.harness.tune", *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = urls(tmp_path)[0]
    deadline = time.monotonic() + 120
    try:  # kill it while trial 1 runs (its mlflow run exists)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ts = optuna.load_study(study_name="tune:digits:in-batch",
                                       storage=storage).get_trials()
            except KeyError:
                ts = []
            if any(t.number == 1 and t.state == TrialState.RUNNING and T.ATTR_RUN in
                   t.user_attrs for t in ts):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the process ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed = study(tmp_path, "in-batch").get_trials()
    assert killed[1].state == TrialState.RUNNING
    assert T.main(args) == 0  # waits out its heartbeat, fails it, replaces it
    trials = study(tmp_path, "in-batch").get_trials()
    counted = [t for t in trials if T.counts(t)]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    assert trials[1].state == TrialState.FAIL and not T.counts(trials[1])
    assert len(trials) == 4  # the interrupted one, kept but not counted, and its replacement
    assert [t.number for t in trials if t.user_attrs.get(T.ATTR_DEFAULT)] == [0]
    run = trial_runs(tmp_path, "tune:digits:in-batch")[1]
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["failure"]


# --------------------------------------------------------------------------- export, ablate
def test_export_then_ablate_uses_exactly_the_exported_values(small, tmp_path):
    d, _, _ = small
    out = tmp_path / "specs" / "tuned.toml"
    assert T.main(["--export", str(out), "--storage", urls(d)[0]]) == 0
    text = out.read_text()
    st = study(d, "hcl")
    assert f"# study tune:digits:hcl: best val kNN {st.best_value:.4f}" in text
    assert "5 trials (5 complete, 0 pruned, 0 failed)" in text
    # provenance: the command that tuned each study, the export's own, and their commits
    assert "# tuned by: negbench tune --suite digits --strategy " in text
    assert "# exported by: negbench tune --export " in text and "negbench commit " in text
    exported = tomllib.loads(text)
    assert exported == {"digits": {"hcl": st.best_params}}
    spec = tmp_path / "specs" / "ablation.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl", "in-batch"]\nbudget = '
                    '"samples=768"\ntuned = "tuned.toml"\n[overrides]\n"batch_size" = 128\n'
                    '"eval.linear_epochs" = 10\n"optim.lr" = 0.005\n')
    cells = load_spec(spec).cells()
    hcl, plain = cells
    default = next(t.value for t in st.trials if t.user_attrs.get(T.ATTR_DEFAULT))
    assert hcl.tags == {"negbench.tuned": "tuned.toml",  # the study's figures ride along
                        "negbench.tuned_val": f"{default:.4f} {st.best_value:.4f} 5"}
    assert plain.tags == {}
    flat = hcl.config.flat()
    assert all(flat[k] == v for k, v in st.best_params.items())  # on top of [overrides]
    assert plain.config.optim.lr == 0.005
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert negbench(["ablate", str(spec), "--tracking-uri", tracking, "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("ablation")
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"hcl", "in-batch"}
    for k, v in st.best_params.items():
        assert float(runs["hcl"].data.params[k]) == v
    assert runs["hcl"].data.tags[A.CELL_TAG] == hcl.key
    assert runs["hcl"].data.tags["negbench.tuned"] == "tuned.toml"
    assert "negbench.tuned" not in runs["in-batch"].data.tags


@pytest.mark.parametrize("tuned,spec_extra,needle", [
    (None, "", "no such file"),
    ('[digits.hcl\n"optim.lr" = 1', "", "not valid TOML"),
    ('[mnist.hcl]\n"optim.lr" = 0.001', "", "[mnist] is not a suite; allowed: "),
    ('[digits.hardest]\n"optim.lr" = 0.001', "", "'hardest' is not a strategy; allowed: "),
    ('[digits.hcl]\nlr = 0.001', "", "allowed keys are dotted run keys"),
    ('[digits.hcl]\n"budget.amount" = 10', "", "allowed keys are dotted run keys"),
    ('[digits.hcl]\n"optim.lrr" = 0.001', "", "optim.lrr"),
    ('[digits.hcl]\n"strategy.beta" = 0.5', "[strategy.hcl]\nbeta = 1.5\n",
     "[strategy.hcl] sets strategy.beta = 1.5, and the tuned file"),
])
def test_a_bad_tuned_file_is_a_spec_error_naming_it(tmp_path, tuned, spec_extra, needle):
    if tuned is not None:
        (tmp_path / "t.toml").write_text(tuned)
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl"]\ntuned = "t.toml"\n' + spec_extra)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    msg = str(e.value)
    assert msg.startswith(str(spec)) and "tuned" in msg and needle in msg, msg
    assert str(tmp_path / "t.toml") in msg or "[strategy.hcl]" in msg
    assert "\n" not in msg


def test_a_spec_reads_one_tuned_file_per_suite(tmp_path):
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "digits.toml").write_text('[digits.hcl]\n"strategy.beta" = 0.7\n')
    (tmp_path / "tuned" / "bbc-news.toml").write_text('[bbc-news.hcl]\n"optim.lr" = 1e-4\n')
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits", "bbc-news"]\nstrategies = ["hcl", "in-batch"]\n'
                    'tuned = ["tuned/digits.toml", "tuned/bbc-news.toml"]\n')
    cells = {(c.config.suite, c.config.strategy): c for c in load_spec(spec).cells()}
    assert cells["digits", "hcl"].config.strategy_cfg.beta == 0.7
    assert cells["digits", "hcl"].tags == {"negbench.tuned": "digits.toml"}
    assert cells["bbc-news", "hcl"].config.optim.lr == 1e-4
    assert cells["bbc-news", "hcl"].config.strategy_cfg.beta != 0.7
    assert cells["bbc-news", "hcl"].tags == {"negbench.tuned": "bbc-news.toml"}
    assert cells["digits", "in-batch"].tags == {}
    (tmp_path / "tuned" / "bbc-news.toml").write_text('[digits.hcl]\n"optim.lr" = 1e-4\n')
    with pytest.raises(SpecError, match=r"\[digits.hcl\] is in both .*digits.toml and"):
        load_spec(spec)


def test_a_tuned_value_equal_to_the_spec_is_no_conflict(tmp_path):
    (tmp_path / "t.toml").write_text('[digits.hcl]\n"strategy.beta" = 0.5\n"optim.lr" = 1e-3\n')
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl"]\ntuned = "t.toml"\n'
                    '[strategy.hcl]\nbeta = 0.5\n')
    (cell,) = load_spec(spec).cells()
    assert cell.config.strategy_cfg.beta == 0.5 and cell.config.optim.lr == 1e-3


def test_a_held_value_is_exported_with_the_tuned_ones(tmp_path):
    """A knob a study held with --set is part of the configuration it tuned: the export writes
    it (marked held) beside the searched keys, so a spec that reads the file runs it."""
    assert T.main(tune_args(tmp_path, "hcl", 1, "--pruner", "none",
                            "--set", "strategy.beta=0.5")) == 0
    out = tmp_path / "t.toml"
    assert T.main(["--export", str(out), "--storage", urls(tmp_path)[0]]) == 0
    assert '"strategy.beta" = 0.5  # held, not searched' in out.read_text()
    table = tomllib.loads(out.read_text())["digits"]["hcl"]
    assert table["strategy.beta"] == 0.5
    assert "strategy.beta" not in study(tmp_path, "hcl").best_params
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl"]\ntuned = "t.toml"\n')
    (cell,) = load_spec(spec).cells()
    assert cell.config.strategy_cfg.beta == 0.5


def test_also_default_runs_each_tuned_pair_both_ways(tmp_path):
    import pandas as pd

    from negbench.reports.data import variant_labels

    (tmp_path / "t.toml").write_text('[digits.hcl]\n"strategy.beta" = 0.7\n')
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl", "in-batch"]\nseeds = 2\n'
                    'tuned = "t.toml"\nalso_default = true\n')
    cells = load_spec(spec).cells()
    tag = {"negbench.tuned": "t.toml"}
    assert [(c.config.strategy, c.config.seed, c.config.strategy_cfg.beta
             if c.config.strategy == "hcl" else None, c.tags) for c in cells] == [
        ("hcl", 0, 1.0, {}), ("hcl", 1, 1.0, {}), ("hcl", 0, 0.7, tag), ("hcl", 1, 0.7, tag),
        ("in-batch", 0, None, {}), ("in-batch", 1, None, {})]  # no tuned values: once
    assert len({c.key for c in cells}) == 6
    assert cells[2].label == "digits/hcl (tuned)/seed 0" and cells[0].label == "digits/hcl/seed 0"
    # tuned values that are the defaults (the tuning's best trial was the enqueued defaults):
    # one cell per seed, which is both, tagged so the report does not say "no default run"
    (tmp_path / "t.toml").write_text('[digits.hcl]\n"strategy.beta" = 1.0\n')
    same = load_spec(spec).cells()
    assert [(c.config.strategy, c.config.seed, c.tags.get("negbench.tuned_same")) for c in same] \
        == [("hcl", 0, "1"), ("hcl", 1, "1"), ("in-batch", 0, None), ("in-batch", 1, None)]
    assert same[0].key == cells[0].key and same[0].label == "digits/hcl/seed 0"
    (tmp_path / "t.toml").write_text('[digits.hcl]\n"strategy.beta" = 0.7\n')
    for bad, needle in (("also_default = 1\n", "must be true or false"),
                        ("also_default = true\n", "needs tuned")):
        spec.write_text('suites = ["digits"]\nstrategies = ["hcl"]\n' + bad)
        with pytest.raises(SpecError, match=needle):
            load_spec(spec)
    # report labels: "(tuned)" only beside the strategy's default runs
    frame = pd.DataFrame({"strategy": ["hcl", "hcl", "in-batch", "random", "random"],
                          "tuned": ["", "t.toml", "t.toml", "t.toml", "u.toml"]})
    assert list(variant_labels(frame)) == ["hcl", "hcl (tuned)", "in-batch",
                                           "random (tuned: t.toml)", "random (tuned: u.toml)"]
    # the main job: one export per suite, every run tuned, so plain names in both sections
    frame = pd.DataFrame({"strategy": ["random", "in-batch", "random", "in-batch"],
                          "suite": ["digits", "digits", "bbc-news", "bbc-news"],
                          "budget": ["samples=60000"] * 2 + ["samples=15000"] * 2,
                          "tuned": ["digits.toml"] * 2 + ["bbc-news.toml"] * 2})
    assert list(variant_labels(frame)) == ["random", "in-batch", "random", "in-batch"]


# --------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv,needle", [
    (["--suite", "digits", "--strategy", "hcl"], "--trials required"),
    (["--suite", "digits", "--strategy", "hcll", "--trials", "2"], "unknown name 'hcll'"),
    (["--suite", "digits", "--strategy", "hcl", "--trials", "0"], "--trials must be >= 1"),
    (["--suite", "digits", "--strategy", "hcl", "--trials", "2", "--checkpoints", "0.5,1.2"],
     "--checkpoints"),
    (["--suite", "digits", "--strategy", "hcl", "--trials", "2", "--set", "eval.split=test"],
     "allowed: val"),
    (["--suite", "digits", "--strategy", "hcl", "--trials", "2", "--set", "optim.lrr=1"],
     "optim.lrr"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, needle):
    storage, tracking = urls(tmp_path)
    code = T.main([*argv, "--storage", storage, "--tracking-uri", tracking, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("negbench tune: error: ") and needle in err, err
    assert "\n" not in err


def test_export_of_a_missing_storage_is_an_error(tmp_path, capsys):
    assert T.main(["--export", str(tmp_path / "x.toml"), "--storage",
                   f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no such optuna database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_job_rejects_a_bad_pruner():
    with pytest.raises(ConfigError, match="median, hyperband, none"):
        T.Job(suites=("digits",), strategies=("hcl",), trials=1, pruner="asha")


# --------------------------------------------------------------------------- workers
def test_two_local_workers_share_the_studies_exactly(tmp_path):
    args = tune_args(tmp_path, "in-batch,hcl", 3, "--workers", "2", "--pruner", "none")
    assert T.main(args) == 0
    for name in ("in-batch", "hcl"):
        trials = study(tmp_path, name).get_trials()
        counted = [t for t in trials if T.counts(t)]
        assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
        assert len({tuple(sorted(t.params.items())) for t in counted}) == 3  # no point twice
        # a trial asked for by both workers at once past the third is ended unrun, uncounted
        extra = [t for t in trials if not T.counts(t)]
        assert all(t.user_attrs.get(T.ATTR_SURPLUS) and not t.params for t in extra)
        assert sorted(trial_runs(tmp_path, f"tune:digits:{name}")) == sorted(
            t.number for t in counted)
    assert all(math.isfinite(t.value) for t in study(tmp_path, "hcl").trials)


@pytest.mark.slow  # about a minute: 4 tuning runs in 3 processes; CI keeps to the fast tests
def test_the_shipped_tuning_script_writes_a_file_a_spec_reads(tmp_path):
    """scripts/tune_shipped.sh at a tiny budget: a tuned file per suite, headed by the commands
    and commit that produced it, which a spec reads (the shipped files are made the same way,
    at the full budget)."""
    out = tmp_path / "tuned"
    env = {**os.environ, "TRIALS": "2", "BUDGET": "samples=512", "STRATEGIES": "in-batch,hcl",
           "OUT": str(out), "NEGBENCH_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "tune_shipped.sh"), "digits"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = (out / "digits.toml").read_text()
    assert "# tuned by: negbench tune --suite digits --strategy in-batch,hcl --trials 2" in text
    assert "--study shipped-digits" in text and "negbench commit " in text
    assert set(tomllib.loads(text)["digits"]) == {"in-batch", "hcl"}
    spec = tmp_path / "s.toml"
    spec.write_text('suites = ["digits"]\nstrategies = ["hcl"]\n'
                    f'tuned = ["{out / "digits.toml"}"]\n')
    (cell,) = load_spec(spec).cells()
    assert cell.tags["negbench.tuned"] == "digits.toml" and "negbench.tuned_val" in cell.tags
