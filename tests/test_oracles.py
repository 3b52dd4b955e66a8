"""Oracle references (fn-free, supcon) and the rule that no other strategy sees a label; a run
that collapses is tagged so and left out of the report's ranking."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx

from negbench import strategies
from negbench.harness.config import build_config, parse_budget
from negbench.harness.objectives import info_nce
from negbench.harness.runner import HEALTH_TAG, ORACLE_TAG, Trainer, run


def _batch(b=24, d=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g), dim=1)
    k = F.normalize(q + 0.3 * torch.randn(b, d, generator=g), dim=1)
    ids = torch.randperm(100, generator=g)[:b]
    labels = torch.randint(0, classes, (100,), generator=g)
    return q, k, ids, labels


def _ctx(ids, labels, d=16):
    ctx = make_ctx(ids, Table(100, d))
    ctx.labels = labels
    return ctx


def test_oracles_are_flagged_and_the_rest_are_not():
    flagged = {n for n in strategies.names() if strategies.get(n).oracle}
    assert flagged == {"fn-free", "supcon"}


def test_fn_free_never_selects_a_same_class_candidate():
    q, k, ids, labels = _batch()
    s = strategies.create("fn-free", dim=16, n_train=100)
    negs = s.select(q, k, _ctx(ids, labels))
    y = labels[negs.pool_ids]
    same = y[:, None] == y[None, :]
    assert not (negs.mask & same).any()
    # and it keeps every other-class view (in-batch less exactly the same-class ones)
    inb = strategies.create("in-batch", dim=16, n_train=100).select(q, k, _ctx(ids, labels))
    assert torch.equal(negs.mask, inb.mask & ~same)
    with pytest.raises(strategies.StrategyError, match="labels"):
        s.select(q, k, make_ctx(ids, Table(100, 16)))


def _supcon_loop(q, k, y, tau):
    """Khosla et al. 2020, L_out, written from the paper with loops: 2B anchors, A(i) = every
    other view, P(i) = those with i's label."""
    z = torch.cat([q, k]).double()
    yy = torch.cat([y, y])
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        pos = [p for p in others if yy[p] == yy[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos)
    return total / n


@pytest.mark.parametrize("tau", [0.2, 0.5])
def test_supcon_equals_a_loop_reference(tau):
    q, k, ids, labels = _batch()
    s = strategies.create("supcon", dim=16, n_train=100)
    negs = s.select(q, k, _ctx(ids, labels))
    loss = info_nce(negs, tau).loss
    assert float(loss) == pytest.approx(_supcon_loop(q, k, labels[ids], tau), rel=1e-5)
    # the meters see the other classes only: no selected candidate shares the anchor's label
    y = labels[negs.pool_ids]
    assert not (negs.selected() & (y[:, None] == y[None, :])).any()


@pytest.mark.parametrize("tau", [0.2, 0.01])  # the fused function, and the clamped path
def test_supcon_gradient_equals_autograd_of_the_plain_expression(tau):
    """L_out's gradient with respect to both views, against autograd through log-softmax in
    float64: -mean over P(i) of log softmax_i over A(i) (every other view)."""
    q, k, ids, labels = _batch(seed=4)
    y = torch.cat([labels[ids]] * 2)
    n = y.shape[0]
    others = ~torch.eye(n, dtype=torch.bool)
    pos = others & (y[:, None] == y[None, :])

    def plain(q, k):
        z = torch.cat([q, k])
        logp = torch.where(others, z @ z.T / tau, float("-inf")).log_softmax(1)
        return -(torch.where(pos, logp, 0.0).sum(1) / pos.sum(1)).mean()

    qd, kd = q.double().requires_grad_(), k.double().requires_grad_()
    plain(qd, kd).backward()
    qf, kf = q.clone().requires_grad_(), k.clone().requires_grad_()
    negs = strategies.create("supcon", dim=16, n_train=100).select(qf, kf, _ctx(ids, labels))
    info_nce(negs, tau).loss.backward()
    for got, want in ((qf.grad, qd.grad), (kf.grad, kd.grad)):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6 / tau)
    assert float(qd.grad.abs().max()) > 1e-3  # a gradient there is to compare


def test_supcon_without_same_class_items_is_in_batch_infonce():
    q, k, ids, _ = _batch()
    distinct = torch.arange(100)  # every item its own class: P(i) is the other view alone
    sup = strategies.create("supcon", dim=16, n_train=100).select(q, k, _ctx(ids, distinct))
    inb = strategies.create("in-batch", dim=16, n_train=100).select(q, k, _ctx(ids, distinct))
    assert float(info_nce(sup, 0.2).loss) == pytest.approx(float(info_nce(inb, 0.2).loss),
                                                          rel=1e-6)


def test_no_strategy_but_an_oracle_is_given_labels():
    """Every registered strategy through the registry and the trainer: the context handed to
    its selection holds the labels only when the strategy is an oracle reference."""
    seen = {}
    for name in strategies.names():
        cfg = build_config("digits", name, seed=0, budget=parse_budget("samples=64"),
                           sets={"batch_size": "32", "log_every": "1"})
        tr = Trainer(cfg)
        mine = tr.strategy.mine

        def spy(q, k, ctx, mine=mine, name=name):
            seen.setdefault(name, []).append(ctx.labels)
            return mine(q, k, ctx)

        tr.strategy.mine = spy
        tr.train()
        oracle = tr.strategy.oracle
        got = seen[name]
        assert got, name
        if oracle:
            assert all(torch.equal(lab, tr.train_split.y) for lab in got), name
        else:
            assert all(lab is None for lab in got), f"{name} was given labels"
    assert set(seen) == set(strategies.names())


def test_a_collapsing_run_is_tagged_and_left_out_of_the_ranking(tmp_path: Path):
    from negbench.reports.build import build
    from negbench.reports.data import load

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = {"batch_size": "64", "log_every": "2", "eval.linear_epochs": "20"}

    def collapse(tr, fraction):  # from mid-run on, the features are one constant vector
        bn = [m for m in tr.encoder.backbone if isinstance(m, torch.nn.BatchNorm2d)][-1]
        with torch.no_grad():
            bn.weight.zero_()
            bn.bias.fill_(1.0)
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)

    for name in ("in-batch", "hcl"):
        cfg = build_config("digits", name, seed=0, budget=parse_budget("samples=1280"),
                           sets=sets)
        kw = {"checkpoints": (0.5,), "on_checkpoint": collapse} if name == "hcl" else {}
        r = run(cfg, tracking_uri=uri, experiment="collapse", **kw)
        assert (r.health == "collapsed") == (name == "hcl"), (name, r.health_reason)
        assert math.isfinite(r.metrics["uniform"]) and "floor_knn_acc" in r.metrics
    runs = load(uri, "collapse")
    tags = {row.strategy: row.tags for row in runs.frame.itertuples()}
    assert tags["hcl"][HEALTH_TAG] == "collapsed" and ORACLE_TAG not in tags["hcl"]
    assert "RankMe" in tags["hcl"]["negbench.health_reason"]
    report = build(runs)
    section = report.data["sections"][0]
    assert section["order"] == ["in-batch"]
    assert [d["strategy"] for d in section["did_not_train"]] == ["hcl"]
    assert "hcl" not in report.sections[0].headline
    json.dumps(report.data, default=str)  # the report's data stays serialisable
