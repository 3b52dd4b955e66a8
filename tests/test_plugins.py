"""Plugins: a user's own strategy or suite registered from a file (``--plugin``, ``plugins =``
in a spec), a module or a package's entry points, listed with its origin, and checked by
``negbench check`` against the registry's contract (a good plugin passes, broken ones fail
with the line that says why)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_spec

from negbench import strategies, suites
from negbench.harness.check import LabelRead, LabelTrap, check_strategy
from negbench.harness.cli import hoist_plugins, main
from negbench.strategies import registry

GOOD = '''
"""A user's strategy: the K hardest in-batch negatives of each anchor, by index."""
from dataclasses import dataclass
from typing import ClassVar

from negbench.strategies import Int, Negatives, Strategy, register
from negbench.strategies.kernels import in_batch_negatives


@dataclass(frozen=True)
class HardestConfig:
    K: int = 4
    space: ClassVar[dict] = {"K": Int(1, 64)}


@register("{name}")
class Hardest(Strategy):
    """The K most similar other views of the batch."""

    Config = HardestConfig
    paper = "a user's own"
    cfg: HardestConfig

    def mine(self, q, k, ctx):
        negs = in_batch_negatives(q, k, ctx.ids)
        sim = (negs.anchors @ negs.pool.T).detach().masked_fill(~negs.mask, -4.0)
        {body}
        index = sim.topk(min(self.cfg.K, sim.shape[1] - 2), dim=1).indices  # (A, K)
        return Negatives(anchors=negs.anchors, positives=negs.positives,
                         anchor_ids=negs.anchor_ids, pool=negs.pool, pool_ids=negs.pool_ids,
                         index=index)
'''
# the deliberate offenders: the same strategy, one taking each anchor's own other view (its
# positive) as its hardest negative, one reading the oracle labels to drop same-class candidates
OWN = "sim = sim.masked_fill(negs.pool_ids[None, :] == negs.anchor_ids[:, None], 9.0)"
LABELS = ("lab = ctx.labels[negs.pool_ids]  # reads labels\n"
          "        sim = sim.masked_fill(lab[None, :] == lab[:, None], -4.0)")

SUITE = '''
"""A user's suite: digits, with its test split drawn by another seed."""
from dataclasses import dataclass, replace

from negbench.suites import register
from negbench.suites.digits import Digits, DigitsConfig


@dataclass(frozen=True)
class MyDigitsConfig(DigitsConfig):
    split_seed: int = 7


@register("my-digits")
class MyDigits(Digits):
    Config = MyDigitsConfig
    source = "digits, re-split"
'''


def _plugin(tmp_path: Path, name: str, body: str = "", file: str | None = None) -> Path:
    p = tmp_path / (file or f"{name.replace('-', '_')}.py")
    p.write_text(GOOD.replace("{name}", name).replace("{body}", body))
    return p


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    """Every name a test registers is removed afterwards, and the plugins it loaded forgotten,
    so the other tests see the built-in registries."""
    monkeypatch.delenv(registry.PLUGIN_ENV, raising=False)
    before = set(strategies.names()), set(suites.names())
    loaded = dict(registry._plugins)
    yield
    for reg, old in ((strategies.REGISTRY, before[0]), (suites.REGISTRY, before[1])):
        for n in set(reg.names()) - old:
            reg.unregister(n)
    registry._plugins.clear()
    registry._plugins.update(loaded)


def test_a_plugin_file_registers_runs_and_passes_check(tmp_path, capsys):
    f = _plugin(tmp_path, "hardest")
    assert main(["strategies", "--plugin", str(f)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "hardest" in line)
    assert "plugin" in row and "in-batch" not in row
    assert registry.loaded_plugins() == [str(f.resolve())]
    assert os.environ[registry.PLUGIN_ENV] == str(f.resolve())  # for child processes
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    assert main(["run", "--plugin", str(f), "--suite", "digits", "--strategy", "hardest",
                 "--budget", "samples=256", "--set", "batch_size=32", "--set",
                 "eval.linear_epochs=5", "--tracking-uri", uri, "--no-progress", "--json"]) == 0
    capsys.readouterr()
    assert main(["check", "strategy", "hardest", "--plugin", str(f)]) == 0
    out = capsys.readouterr().out
    assert "passes all 7 checks" in out and "FAIL" not in out


@pytest.mark.parametrize("bad,check,why", [(OWN, "own instance", "contract violation"),
                                           (LABELS, "no labels", "used ctx.labels")])
def test_a_broken_plugin_fails_check_with_a_clear_line(tmp_path, capsys, bad, check, why):
    f = _plugin(tmp_path, "broken", body=bad)
    assert main(["check", "strategy", "broken", "--plugin", str(f)]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "FAILS" in x)
    assert f"{check}:" in line and why in line, line
    results = {r.check: r.ok for r in check_strategy("broken")}
    assert results[check] is False and results["declares"] is True
    if check == "no labels":  # what failed only for want of labels is not judged
        assert [c for c, ok in results.items() if ok is False] == ["no labels"]
        assert results["shapes"] is None and "(5 not judged)" in line
    else:
        assert None not in results.values()


def test_every_registered_strategy_passes_its_table_checks():
    """The checks pass on every strategy of the repository (the real-run check is left to
    tests/test_registry.py::test_strategy_trains_on_digits, which runs each already)."""
    from negbench.harness.check import STRATEGY_CHECKS, _one

    fast = [(c, f) for c, f in STRATEGY_CHECKS if c != "within budget"]
    for name in strategies.names():
        failed = [r for r in (_one(c, lambda f=f, n=name: f(n)) for c, f in fast) if not r.ok]
        assert not failed, (name, failed)


def test_the_label_trap_catches_every_use():
    import torch

    for use in (lambda t: t[0], lambda t: t.to("cpu"), lambda t: t == 1,
                lambda t: torch.eq(t, 1), lambda t: len(t)):
        trap = LabelTrap()
        with pytest.raises(LabelRead):
            use(trap)
        assert trap.used
    assert LabelTrap() is not None  # an identity test is not a use


def test_a_plugin_suite_is_listed_with_its_origin_and_checked(tmp_path, capsys):
    f = tmp_path / "my_suite.py"
    f.write_text(SUITE)
    assert main(["suites", "--plugin", str(f)]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "my-digits" in x)
    assert "plugin" in row
    assert main(["check", "suite", "my-digits", "--plugin", str(f)]) == 0
    assert "passes all 5 checks" in capsys.readouterr().out
    # its own split: not digits' (another split seed, the same sizes)
    a, b = suites.create("my-digits").load(), suites.create("digits").load()
    assert len(a.test) == len(b.test) and not a.test.source.equal(b.test.source)


def test_a_spec_names_plugins_relative_to_itself(tmp_path, capsys):
    sub = tmp_path / "specs"
    sub.mkdir()
    _plugin(sub, "hardest-spec")
    spec = write_spec(sub, '''
        plugins = ["hardest_spec.py"]
        suites = ["digits"]
        strategies = ["in-batch", "hardest-spec"]
        budget = "samples=256"
    ''')
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    assert main(["ablate", spec, "--dry-run", "--tracking-uri", uri, "--no-progress"]) == 0
    assert "hardest-spec" in capsys.readouterr().out
    bad = write_spec(sub, 'plugins = ["nowhere.py"]\nsuites = ["digits"]\n'
                          'strategies = ["in-batch"]\n', name="bad.toml")
    assert main(["ablate", bad, "--dry-run", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nowhere.py: no such file" in err


def test_plugin_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "raises.py"
    f.write_text("raise RuntimeError('half-written plugin')\n")
    assert main(["--plugin", str(f), "strategies"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RuntimeError: half-written plugin" in err
    dup = _plugin(tmp_path, "in-batch", file="dup.py")  # a taken name
    assert main(["strategies", f"--plugin={dup}"]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["strategies", "--plugin", "no_such_module_xyz"]) == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err


def test_hoist_plugins_moves_every_form_before_the_subcommand():
    got = hoist_plugins(["run", "--suite", "digits", "--plugin", "a.py", "--plugin=b.py", "--",
                         "--plugin", "c"])
    assert got == ["--plugin", "a.py", "--plugin=b.py", "run", "--suite", "digits", "--",
                   "--plugin", "c"]


def test_entry_points_and_the_environment_reach_a_fresh_process(tmp_path):
    """A package installed with a ``negbench.strategies`` entry point, and a file named in
    ``$NEGBENCH_PLUGINS`` (as a parent command passes its plugins to its workers), are both
    registered in a new process, each with its origin."""
    site = tmp_path / "site"
    dist = site / "userpkg-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[negbench.strategies]\nfrom-ep = userpkg_mod\n")
    (site / "userpkg_mod.py").write_text(GOOD.replace("{name}", "from-ep").replace("{body}", ""))
    f = _plugin(tmp_path, "from-env")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get(
        "PYTHONPATH", "")]), registry.PLUGIN_ENV: str(f.resolve()), "COLUMNS": "250"}
    code = textwrap.dedent("""
        from negbench import strategies
        for n in ("from-ep", "from-env", "in-batch"):
            print(n, "|", strategies.REGISTRY.origin(n))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    origins = dict(line.split(" | ") for line in out.strip().splitlines())
    assert origins["from-ep"] == "entry point userpkg_mod (userpkg)"
    assert origins["from-env"] == f"plugin {f.resolve()}"
    assert origins["in-batch"] == "negbench"
