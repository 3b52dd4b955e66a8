"""Registry behaviour and conformance tests driven by the registry: every registered strategy
and suite is tested here without anyone listing it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import pkgutil
import sys

import pytest
import torch
from conftest import Table, make_ctx

from negbench import strategies, suites
from negbench.harness import check
from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.objectives import info_nce
from negbench.harness.runner import Trainer, run
from negbench.strategies import Negatives, Strategy, StrategyError, register
from negbench.strategies.registry import RegistryError

STRATEGIES = strategies.names()
SUITES = suites.names()


# --------------------------------------------------------------------------- the registry
def test_registry_holds_the_foundation_strategies():
    assert {"random", "in-batch"} <= set(STRATEGIES)
    assert {"digits", "fashion-mnist"} <= set(SUITES)


def test_duplicate_name_raises():
    with pytest.raises(RegistryError, match="already registered"):
        @register("in-batch")
        class Again(Strategy):  # noqa: F841
            pass


def test_unknown_name_suggests_closest():
    with pytest.raises(RegistryError, match="did you mean 'in-batch'"):
        strategies.get("inbatch")
    with pytest.raises(RegistryError, match="did you mean 'digits'"):
        suites.get("digit")


def test_a_new_strategy_registers_and_is_listed():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        space = {}

    @register("throwaway-test")
    class Throwaway(Strategy):
        Config = Cfg

    try:
        assert "throwaway-test" in strategies.names()
        assert strategies.create("throwaway-test", dim=4, n_train=10).name == "throwaway-test"
    finally:
        strategies.REGISTRY.unregister("throwaway-test")


# --------------------------------------------------------------------------- conformance
# The contract is harness/check.py's (what `negbench check strategy` runs on a plugin, and
# tests/test_plugins.py on every registered strategy): these tests add what it does not check.
def _inputs(b: int = check.B):
    return check._inputs(0, b)


def _select(name: str) -> list[Negatives]:
    """Three select/update steps on the check's fixed table (D=16, 300 items), contract-checked."""
    s, out = check._steps(name)
    s.check()
    return out


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_declares_what_our_own_modules_owe(name):
    """Beyond check's "declares" (paper, frozen Config, a space holding every default, run on
    every strategy by tests/test_plugins.py), what a strategy of this repository owes."""
    cls = strategies.get(name)
    assert cls.name == name
    assert cls.__doc__ and cls.__module__.startswith("negbench.strategies.")
    hints = inspect.get_annotations(cls, eval_str=True)
    assert hints.get("cfg") is cls.Config, f"{name}: declare cfg: {cls.Config.__name__}"


NOT_STRATEGIES = {"base", "registry", "kernels"}  # modules of negbench.strategies any may import


def _imported_modules(tree: ast.Module, package: str) -> set[str]:
    """Every module a parsed source file imports, absolute (relative imports resolved against
    ``package``); ``from X import Y`` counts as X and as X.Y (Y may be a submodule)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_imports_no_other_strategy(name):
    """Strategies are leaves (DESIGN.md): what two of them share lives in
    ``strategies/kernels.py``, so no strategy module imports another strategy module."""
    module = sys.modules[strategies.get(name).__module__]
    if not module.__name__.startswith("negbench.strategies."):
        pytest.skip(f"{name} is a plugin, not one of negbench's modules")
    siblings = {f"negbench.strategies.{m.name}"
                for m in pkgutil.iter_modules(strategies.__path__)
                if m.name not in NOT_STRATEGIES} - {module.__name__}
    tree = ast.parse(inspect.getsource(module))
    imported = _imported_modules(tree, "negbench.strategies")
    bad = sorted(m for m in imported if any(m == s or m.startswith(s + ".") for s in siblings))
    assert not bad, (f"{module.__name__} imports {', '.join(bad)}: move what it shares into "
                     "negbench.strategies.kernels")


def test_the_import_check_sees_every_form_of_import():
    src = ("import negbench.strategies.hcl\nfrom negbench.strategies import mixing, Negatives\n"
           "from .curriculum import x\nfrom . import dynamic\nfrom negbench.strategies.kernels "
           "import y\n")
    got = _imported_modules(ast.parse(src), "negbench.strategies")
    assert {"negbench.strategies.hcl", "negbench.strategies.mixing",
            "negbench.strategies.curriculum.x", "negbench.strategies.dynamic",
            "negbench.strategies.kernels.y"} <= got


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_output_conforms(name):
    out = _select(name)
    # a stateful strategy may start empty (a bank); after two updates every anchor has negatives
    assert out[-1].selected().any(dim=1).all()
    for negs in out:
        a = negs.num_anchors
        assert negs.anchors.shape == negs.positives.shape and a >= 8
        sel = negs.selected()
        assert sel.shape[0] == a
        assert torch.isfinite(negs.pool).all() and torch.isfinite(negs.anchors).all()
        assert not (sel & negs.own_instance()).any(), "own instance selected"
        if negs.weights is not None:
            assert torch.isfinite(negs.weights).all() and (negs.weights >= 0).all()
        out = info_nce(negs, 0.2)
        assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", STRATEGIES)
def test_precomputed_similarities_equal_a_recomputation(name):
    """A strategy that hands its product to the objective (``Negatives.sim``) must hand the
    right one: the shared columns equal anchors x candidates, and materialised extras too."""
    for negs in _select(name):
        if negs.sim is None:
            continue
        sim = negs.sim.detach()
        if negs.index is None:
            want = negs.anchors @ negs.pool.T  # (A, P)
        else:
            want = torch.einsum("ad,akd->ak", negs.anchors, negs.pool[negs.index])  # (A, K)
        w = want.shape[1]
        assert sim.shape == (negs.num_anchors, negs.width)
        torch.testing.assert_close(sim[:, :w], want.detach())
        if negs.extra is not None:
            ext = torch.einsum("ad,asd->as", negs.anchors, negs.extra)  # (A, S)
            torch.testing.assert_close(sim[:, w:], ext.detach())


@dataclasses.dataclass(frozen=True)
class _NoConfig:
    space = {}


def _offender(name: str, mine) -> Strategy:
    """An unregistered strategy (D=16, 300 training items) whose ``mine(self, q, k, ctx)`` is
    given: the contract tests' deliberate offenders."""
    cls = type(name, (Strategy,), {"name": name, "Config": _NoConfig, "mine": mine})
    return cls(_NoConfig(), dim=16, n_train=300)


def test_contract_violation_is_caught():
    def mine(self, q, k, ctx):
        return Negatives(anchors=q, positives=k, anchor_ids=ctx.ids, pool=k,
                         pool_ids=ctx.ids, mask=torch.ones(len(q), len(k), dtype=torch.bool))

    s = _offender("cheater", mine)
    ids, q, k = _inputs()
    s.select(q, k, make_ctx(ids, Table(300, 16)))
    with pytest.raises(StrategyError, match="own instance"):
        s.check()


def test_own_instance_in_one_row_of_the_key_half_is_caught_within_a_rotation():
    """The contract check compares CHECK_ROWS anchor rows per step, moving through the rows:
    a single offending row, past the first block, is caught within A / CHECK_ROWS steps."""
    from negbench.strategies.base import CHECK_ROWS
    from negbench.strategies.kernels import in_batch_negatives

    def mine(self, q, k, ctx):
        negs = in_batch_negatives(q, k, ctx.ids)
        mask = negs.mask.clone()
        mask[-1] = True  # the last key-view anchor takes its own two views
        negs.mask = mask
        return negs

    b = 2 * CHECK_ROWS  # A = 2B = 4 blocks of rows
    s = _offender("one-bad-row", mine)
    ids, q, k = _inputs(b)
    table = Table(300, 16)
    for step in range(3):  # the last block is not looked at before step 3
        s.select(q, k, make_ctx(ids, table, step=step))
    s.check()
    s.select(q, k, make_ctx(ids, table, step=3))
    with pytest.raises(StrategyError, match="2 contract violations"):
        s.check()


def test_constant_weights_written_in_place_are_checked_again():
    """A weight tensor returned unchanged step after step is checked once; written in place,
    its version changes and it is checked again."""
    from negbench.strategies.kernels import in_batch_negatives

    def mine(self, q, k, ctx):
        negs = in_batch_negatives(q, k, ctx.ids)
        if not hasattr(self, "w"):
            self.w = torch.ones(negs.mask.shape)
        negs.weights = self.w
        return negs

    s = _offender("constant-weights", mine)
    ids, q, k = _inputs()
    table = Table(300, 16)
    for step in range(2):
        s.select(q, k, make_ctx(ids, table, step=step))
    s.check()
    s.w[0, 1] = -1.0  # in place
    s.select(q, k, make_ctx(ids, table, step=2))
    with pytest.raises(StrategyError, match="1 contract violations"):
        s.check()


@pytest.mark.parametrize("bad", ["nan", "inf", "negative", "index-low", "index-high", "none"])
def test_bad_weights_and_indices_are_caught(bad):
    """Weights (checked by their least and largest entries) must be finite and >= 0, indices
    inside the pool; one bad entry among valid ones is enough."""
    def mine(self, q, k, ctx):
        b = len(q)
        index = torch.stack([(torch.arange(b) + 1) % b, (torch.arange(b) + 2) % b], dim=1)
        weights = torch.rand(b, 2) + 0.5  # (B, 2)
        if bad == "index-low":
            index[3, 1] = -1
        elif bad == "index-high":
            index[3, 1] = b
        elif bad != "none":
            weights[3, 1] = {"nan": math.nan, "inf": math.inf, "negative": -1e-6}[bad]
        return Negatives(anchors=q, positives=k, anchor_ids=ctx.ids, pool=k,
                         pool_ids=ctx.ids, index=index, weights=weights)

    s = _offender("picky", mine)
    ids, q, k = _inputs()
    if bad == "index-high":  # the own-instance lookup through the index fails first, at once
        with pytest.raises(IndexError):
            s.select(q, k, make_ctx(ids, Table(300, 16)))
        return
    s.select(q, k, make_ctx(ids, Table(300, 16)))
    if bad == "none":
        s.check()
    else:
        with pytest.raises(StrategyError, match="1 contract violations"):
            s.check()


def test_bad_shapes_are_rejected_at_once():
    def mine(self, q, k, ctx):
        return Negatives(anchors=q, positives=k, anchor_ids=ctx.ids, pool=k,
                         pool_ids=ctx.ids, mask=torch.ones(len(q), 3, dtype=torch.bool))

    ids, q, k = _inputs()
    with pytest.raises(StrategyError, match="mask has shape"):
        _offender("wrong", mine).select(q, k, make_ctx(ids, Table(300, 16)))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_trains_on_digits(name, tmp_path):
    """A short real run on digits: finite loss, every final metric present and in range."""
    cfg = build_config("digits", name, seed=0, budget=BudgetConfig("samples", 1536),
                       sets={"batch_size": "128", "log_every": "4", "eval.linear_epochs": "50"})
    r = run(cfg, track=False)
    m = r.metrics
    assert m["samples_seen"] == 1536 and m["steps"] == 12
    for key in ("knn_acc", "linear_acc", "fnr", "fnr_weighted"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert -1.0 <= m["hardness"] <= 1.0 and m["flops"] > 0
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["fnr"]) for h in r.history)


# --------------------------------------------------------------------------- suites
@pytest.mark.parametrize("name", SUITES)
def test_suite_conforms(name):
    s = suites.create(name)
    if s.data_status() != "present":
        pytest.skip(f"{name}: {s.data_status()}")
    d = s.load()
    assert len(d.train) and len(d.val) and len(d.test)
    for split in (d.train, d.val, d.test):
        assert split.y.dtype == torch.long and int(split.y.max()) < d.n_classes
    assert set(d.train.y.tolist()) == set(range(d.n_classes))
    # the splits are disjoint: no source item in two of them
    srcs = [split.source for split in (d.train, d.val, d.test)]
    assert all(src is not None and src.shape == split.y.shape
               for src, split in zip(srcs, (d.train, d.val, d.test), strict=True))
    joined = torch.cat(srcs)
    assert joined.unique().numel() == joined.numel(), "an item lies in two splits"
    g = torch.Generator().manual_seed(0)
    x = d.train.x[:16]
    v1, v2 = s.views(x, g)
    assert v1.shape == v2.shape == s.prepare(x).shape and not torch.equal(v1, v2)
    enc = s.build_encoder()
    z = enc(v1)
    assert z.shape == (16, enc.out_dim)
    assert torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-5)
    assert enc.features(v1).shape == (16, enc.feature_dim)


OFFLINE_SUITES = [n for n in SUITES if suites.get(n).offline]


@pytest.mark.parametrize("name", OFFLINE_SUITES)
def test_offline_suite_trains_and_evaluates(name):
    """Every offline suite: a short real run lowers the loss, every evaluation metric lies in
    [0, 1], and the FNR is counted with the suite's own training labels."""
    s = suites.create(name)
    if s.data_status() != "present":
        pytest.skip(f"{name}: {s.data_status()}")
    cfg = build_config(name, "in-batch", seed=0, budget=BudgetConfig("samples", 32 * 24),
                       sets={"batch_size": "32", "log_every": "6", "eval.linear_epochs": "30"})
    tr = Trainer(cfg)
    assert torch.equal(tr.meter.labels.cpu(), s.load().train.y)  # the oracle is the suite's
    tr.train()
    losses = [h["loss"] for h in tr.history]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    m = tr.finish()
    assert suites.get(name).offline
    evals = [k for k in m if k.endswith("_acc") or k.startswith("retrieval_")]
    assert {"knn_acc", "linear_acc"} <= set(evals)
    for key in evals + ["fnr", "fnr_weighted"]:
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
