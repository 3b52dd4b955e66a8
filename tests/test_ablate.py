"""Ablation specs and `negbench ablate`: validation errors, the grid, resuming after kill -9,
failure isolation, local workers and the budget audit, all against a real sqlite mlflow store
and real digits runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import experiment_runs
from conftest import mlflow_uri as uri
from conftest import write_spec as write
from mlflow import MlflowClient

from negbench.harness import ablate as A
from negbench.harness.cli import main
from negbench.harness.spec import SpecError, load_spec

SMALL = '''
suites = ["digits"]
strategies = ["in-batch", "random"]
seeds = 2
budget = "samples=768"
[overrides]
"batch_size" = 128
"eval.linear_epochs" = 10
'''


def runs(tmp_path: Path, experiment: str) -> list:
    return experiment_runs(uri(tmp_path), experiment)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("text,key,allowed", [
    ('suites = ["digits"]\nstrategies = "all"\ncolour = 1', "colour", "allowed: name, suites"),
    ('strategies = "all"', "suites", "a list of names"),
    ('suites = ["digitz"]\nstrategies = "all"', "suites", "allowed: "),
    ('suites = ["digits"]\nstrategies = ["in-batch", "hardest"]', "strategies", "allowed: "),
    ('suites = ["digits"]\nstrategies = "all"\nseeds = 0', "seeds", "a count >= 1"),
    ('suites = ["digits"]\nstrategies = "all"\nbudget = "samples=-5"', "budget", "> 0"),
    ('suites = ["digits"]\nstrategies = "all"\nbudget = 60000', "budget", "KIND=AMOUNT"),
    ('suites = ["digits"]\nstrategies = "all"\n[objective]\ntau = 0.1', "objective.tau",
     "allowed: name, temperature, margin"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[strategy.random]\nK = 4',
     "[strategy.random]", "allowed: in-batch"),
    ('suites = ["digits"]\nstrategies = ["memory-bank"]\n[strategy.memory-bank]\nKK = 4',
     "strategy.KK", "allowed here: K, m"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[overrides]\n"optim.lrr" = 1',
     "optim.lrr", "allowed"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[overrides]\n"strategy.K" = 1',
     "overrides.strategy.K", "[strategy.NAME]"),
    ('suites = ["digits"\nstrategies = 1', "", "not valid TOML"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[sweep]\n"suite.classes" = 2',
     "sweep.suite.classes", "non-empty list of distinct values"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[sweep]\n"suite.classes" = [2, 2]',
     "sweep.suite.classes", "non-empty list of distinct values"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[sweep]\nseed = [1, 2]',
     "sweep.seed", "dotted keys"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[sweep]\n"suite.classes" = [10, 3]',
     "suite.classes=3", "must be one of 2, 10"),
    ('suites = ["digits"]\nstrategies = ["in-batch"]\n[overrides]\n"optim.lr" = 0.1\n'
     '[sweep]\n"optim.lr" = [0.1, 0.01]', "sweep.optim.lr", "also set elsewhere"),
])
def test_every_spec_error_names_file_key_and_what_is_allowed(tmp_path, text, key, allowed):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert msg.startswith(path) and key in msg and allowed in msg, msg
    assert "\n" not in msg


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    path = write(tmp_path, 'suites = ["digits"]\nstrategies = "all"\nseeds = "three"')
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("negbench ablate: error: ") and path in err and "\n" not in err
    assert main(["ablate", str(tmp_path / "missing.toml")]) == 2


def test_grid_identity_and_overrides(tmp_path):
    spec = load_spec(write(tmp_path, SMALL + '[strategy.random]\nK = 64\n"optim.lr" = 0.001\n'))
    cells = spec.cells()
    assert spec.name == "spec" and len(cells) == 4
    assert [c.label for c in cells] == ["digits/in-batch/seed 0", "digits/in-batch/seed 1",
                                        "digits/random/seed 0", "digits/random/seed 1"]
    assert len({c.key for c in cells}) == 4
    r = cells[2].config
    assert r.strategy_cfg.K == 64 and r.optim.lr == 0.001 and r.batch_size == 128
    assert cells[0].config.optim.lr != 0.001  # a strategy's overrides stay in its cells
    assert {c.config.budget.amount for c in cells} == {768}
    # the same resolved config is the same cell, whatever file produced it
    again = load_spec(write(tmp_path, SMALL.replace('["in-batch", "random"]', '["random"]'),
                            "other.toml"))
    assert again.cells()[0].key != cells[2].key  # K=64 there, the default here
    plain = load_spec(write(tmp_path, SMALL, "plain.toml")).cells()
    assert [c.key for c in plain[:2]] == [c.key for c in cells[:2]]


def test_a_sweep_multiplies_the_grid_and_tags_each_point(tmp_path):
    spec = load_spec(write(tmp_path, SMALL + '[sweep]\n"suite.classes" = [10, 2]\n'))
    cells = spec.cells()
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert cells[0].label == "digits/in-batch (suite.classes=10)/seed 0"
    assert [c.config.suite_cfg.classes for c in cells[:4]] == [10, 10, 2, 2]
    assert {c.tags["negbench.sweep"] for c in cells} == {"suite.classes=10", "suite.classes=2"}


def test_shipped_specs_are_valid():
    root = Path(__file__).resolve().parents[1] / "specs"
    demo, standard = load_spec(root / "demo.toml"), load_spec(root / "standard.toml")
    assert demo.suites == ("digits", "bbc-news") and len(demo.strategies) >= 10
    assert standard.suites == ("fashion-mnist", "bbc-news") and standard.seeds == (0, 1, 2)
    filters = load_spec(root / "fn-filters.toml")
    assert filters.name == "fn-aware" and len(filters.fn_filters) == 4  # one experiment, one report
    aware = load_spec(root / "fn-aware.toml")
    assert {"fnc", "glofnd", "positive-aware", "simans", "self-guided"} <= set(aware.strategies)
    pressure = load_spec(root / "fn-pressure.toml")
    assert pressure.sweep == {"suite.classes": (10, 5, 2)}
    assert {"in-batch", "debiased", "hcl", "fn-free"} <= set(pressure.strategies)
    tau = {c.config.suite_cfg.classes: c.config.strategy_cfg.tau_plus for c in pressure.cells()
           if c.config.strategy == "debiased"}
    assert tau == {10: 0.1, 5: 0.22, 2: 0.52}  # the grouping's class prior (Chuang et al.)


def test_dry_run_shows_the_grid_and_runs_nothing(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["ablate", path, "--dry-run", "--tracking-uri", uri(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "0 done, 4 to run" in out and "random" in out
    assert runs(tmp_path, "spec") == []


# --------------------------------------------------------------------------- running
def test_each_cell_once_then_all_skipped_and_audited(tmp_path, capsys):
    path = write(tmp_path, SMALL)
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 cells completed" in out and "budget audit: all 4" in out
    first = runs(tmp_path, "spec")
    assert len(first) == 4 and all(r.info.status == "FINISHED" for r in first)
    keys = {r.data.tags[A.CELL_TAG] for r in first}
    assert keys == {c.key for c in load_spec(path).cells()}
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress"]) == 0
    assert len(runs(tmp_path, "spec")) == 4  # nothing ran twice


def test_a_diverging_cell_fails_alone_with_its_reason(tmp_path, capsys):
    path = write(tmp_path, SMALL + '[strategy.random]\n"optim.lr" = 1e12\n'
                                   '"objective.temperature" = 0.01\n')
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    rs = runs(tmp_path, "spec")
    by = {}
    for r in rs:
        by.setdefault(r.data.tags["strategy"], []).append(r)
    assert sorted(r.info.status for r in by["in-batch"]) == ["FINISHED", "FINISHED"]
    failed = by["random"]
    assert len(failed) == 2 and all(r.info.status == "FAILED" for r in failed)
    assert all("loss is nan" in r.data.tags["failure"] or "loss is inf" in r.data.tags["failure"]
               for r in failed)
    assert "failed digits/random/seed 0" in out and "2 of 4 cells completed" in out


def _wait_for(pred, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_killed_with_sigkill_it_resumes_without_duplicates(tmp_path):
    spec = SMALL.replace('budget = "samples=768"', 'budget = "samples=6144"')
    path = write(tmp_path, spec)
    cmd = [sys.executable, "-m", "negbench.harness.cli", "ablate", path, "--tracking-uri",
           uri(tmp_path), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # kill it while a run is in flight, after at least one cell has completed
        assert _wait_for(lambda: any(r.info.status == "FINISHED" for r in runs(tmp_path, "spec"))
                         and any(r.info.status == "RUNNING" for r in runs(tmp_path, "spec")),
                         timeout=240), "the ablation never got to its second cell"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    before = runs(tmp_path, "spec")
    finished_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    # what kill -9 leaves behind: a run still RUNNING (unless the kill fell between two runs)
    had_running = any(r.info.status == "RUNNING" for r in before)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = runs(tmp_path, "spec")
    done = [x for x in after if x.info.status == "FINISHED"]
    keys = [x.data.tags[A.CELL_TAG] for x in done]
    assert sorted(keys) == sorted(c.key for c in load_spec(path).cells())  # each exactly once
    assert finished_before <= {x.info.run_id for x in done}  # no completed run lost
    assert not any(x.info.status == "RUNNING" for x in after)
    if had_running:
        assert any(x.info.status == "KILLED" for x in after)


def test_two_local_workers_complete_the_same_cells_with_the_same_metrics(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert main(["ablate", write(one, SMALL), "--tracking-uri", uri(one), "--no-progress"]) == 0
    assert main(["ablate", write(two, SMALL), "--workers", "2", "--tracking-uri", uri(two),
                 "--no-progress"]) == 0
    a = {r.data.tags[A.CELL_TAG]: r.data.metrics for r in runs(one, "spec")}
    b = {r.data.tags[A.CELL_TAG]: r.data.metrics for r in runs(two, "spec")}
    assert set(a) == set(b) and len(a) == 4
    for k in a:
        for m in ("knn_acc", "linear_acc", "samples_seen", "steps", "budget_spent"):
            # a worker has one of the 2 threads: float sums may round differently, no more
            assert a[k][m] == pytest.approx(b[k][m], abs=0.02), (k, m)
        assert a[k]["samples_seen"] == b[k]["samples_seen"]


def test_audit_flags_a_run_whose_spend_differs(tmp_path):
    path = write(tmp_path, SMALL.replace("seeds = 2", "seeds = 1"))
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress"]) == 0
    spec = load_spec(path)
    assert A.audit(spec, uri(tmp_path)) == []
    # a run recorded for one cell under another budget (as an older version might have)
    client = MlflowClient(tracking_uri=uri(tmp_path))
    exp = client.get_experiment_by_name("spec")
    for r in client.search_runs([exp.experiment_id]):
        client.set_terminated(r.info.run_id, status="FAILED")  # retire the honest ones
    cell = spec.cells()[0]
    run = client.create_run(exp.experiment_id, tags={A.CELL_TAG: cell.key})
    client.log_metric(run.info.run_id, "budget_total", 512)
    client.log_metric(run.info.run_id, "budget_spent", 512)
    client.set_terminated(run.info.run_id, "FINISHED")
    lines = A.audit(spec, uri(tmp_path))
    assert len(lines) == 1 and cell.label in lines[0] and "samples=768" in lines[0]


def test_ablate_with_report_ends_with_the_reports_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the report's default place: ./negbench-runs/reports/NAME/
    path = write(tmp_path, SMALL.replace("seeds = 2", "seeds = 1"))
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress",
                 "--report"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    index = tmp_path / "negbench-runs" / "reports" / "spec" / "index.html"
    assert last == f"report: {index}" and index.is_file()
    assert "in-batch" in (index.parent / "report.md").read_text()


def test_each_sweep_point_is_a_section_of_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, SMALL.replace("seeds = 2", "seeds = 1")
                 + '[sweep]\n"suite.classes" = [10, 2]\n')
    assert main(["ablate", path, "--tracking-uri", uri(tmp_path), "--no-progress",
                 "--report"]) == 0
    out = capsys.readouterr().out  # ablate's own summary: a table per point, not one averaged
    for k in (10, 2):
        assert f"spec / digits (suite.classes={k}): 1 seed(s)" in out, out
    md = (tmp_path / "negbench-runs" / "reports" / "spec" / "report.md").read_text()
    assert "digits (suite.classes=10)" in md and "digits (suite.classes=2)" in md
    got = {r.data.tags["negbench.sweep"]: r.data.metrics["fnr"] for r in runs(tmp_path, "spec")
           if r.data.tags["strategy"] == "random"}
    assert got["suite.classes=2"] > 2 * got["suite.classes=10"]  # the pressure knob works
    bench = Path(__file__).resolve().parents[1] / "bench" / "fn_pressure.py"
    out = subprocess.run([sys.executable, str(bench), "--experiment", "spec", "--tracking-uri",
                          uri(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| digits | 2 | random | 1 |" in out.stdout and "| digits | 10 | in-batch | 1 |" \
        in out.stdout
    assert "digits random: gain" in out.stdout and "at 10 -> 2 groups" in out.stdout


def test_cell_keys_survive_the_knobs_added_since_they_were_recorded():
    """Keys computed by negbench at commit 570c60b (before objective.hardness_alpha,
    suite.classes and strategy.fn_filter existed): a store's cells keep their identity."""
    from negbench.harness.config import build_config
    from negbench.harness.spec import cell_key

    assert cell_key(build_config("digits", "in-batch")) == "6497f8ec35540eab"
    assert cell_key(build_config("bbc-news", "hcl")) == "349e49f1533bc13c"
    # a new knob away from its old meaning is a new cell
    assert cell_key(build_config("digits", "in-batch", sets={"suite.classes": "2"})) \
        != "6497f8ec35540eab"
    assert cell_key(build_config("digits", "in-batch",
                                 sets={"objective.hardness_alpha": "1"})) != "6497f8ec35540eab"


def test_fn_filters_are_an_axis_and_a_row_label_each(tmp_path):
    import pandas as pd

    from negbench.reports.data import variant_labels

    spec = load_spec(write(tmp_path, 'fn_filters = ["none", "self-guided"]\n' + SMALL))
    cells = spec.cells()
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert [c.config.fn_filter for c in cells[:4]] == ["none", "none", "self-guided",
                                                       "self-guided"]
    assert cells[2].label == "digits/in-batch x self-guided/seed 0"
    for bad in ('fn_filters = ["fnx"]', 'fn_filters = []', 'fn_filters = "oracle"'):
        with pytest.raises(SpecError, match="fn_filters must be a non-empty list"):
            load_spec(write(tmp_path, bad + "\n" + SMALL, "bad.toml"))
    frame = pd.DataFrame({"strategy": ["semi-hard", "semi-hard", "hcl"],
                          "tuned": ["", "", "t.toml"], "fn_filter": ["", "self-guided", "oracle"]})
    assert list(variant_labels(frame)) == ["semi-hard", "semi-hard x self-guided",
                                           "hcl x oracle"]  # every hcl run tuned: plain
