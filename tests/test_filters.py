"""The false-negative filter (strategy.fn_filter): each rule against a loop reference on the
three forms of a selection, its precision and recall on a hand-worked example, the knob's
config, and real runs (issue 18, point 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from negbench.harness.config import ConfigError, build_config
from negbench.harness.filters import apply_filter, filter_metrics
from negbench.harness.runner import run
from negbench.strategies import Negatives

LABELS = torch.tensor([0, 1, 0, 1, 2, 0, 1, 2, 0, 1, -1])  # ids 0..9, then id -1's entry


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _negs(form: str, seed: int = 0) -> Negatives:
    a, p = 5, 8
    anchors = _unit(a, 4, seed=seed)
    positives = F.normalize(anchors + 1.5 * _unit(a, 4, seed=seed + 1), dim=-1)
    pool = _unit(p, 4, seed=seed + 2)
    g = torch.Generator().manual_seed(seed + 3)
    kw = {}
    if form == "index":
        kw["index"] = torch.randint(p, (a, 6), generator=g)
        kw["mask"] = torch.rand(a, 6, generator=g) > 0.1
    else:
        kw["mask"] = torch.rand(a, p, generator=g) > 0.1
    negs = Negatives(anchors=anchors, positives=positives, anchor_ids=torch.arange(a),
                     pool=pool, pool_ids=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]), **kw)
    if form == "extra":
        extra = _unit(a, 3, 4, seed=seed + 4)
        negs = negs.append_extra(extra, torch.tensor([[9, 0, 2]] * a),
                                 torch.rand(a, 3, generator=g) > 0.2)
    return negs


def _loop(negs: Negatives, rule: str) -> torch.Tensor:
    """The kept selection, one (anchor, candidate) at a time, from each filter's rule."""
    a_n, w = negs.num_anchors, negs.width
    w0 = w - negs.num_extra
    keep = torch.zeros(a_n, w, dtype=torch.bool)
    for i in range(a_n):
        s_p = float(negs.anchors[i] @ negs.positives[i])
        for j in range(w):
            if j < w0:
                row = j if negs.index is None else int(negs.index[i, j])
                on = bool(negs.mask[i, j])
                emb, cid = negs.pool[row], int(negs.pool_ids[row])
            else:
                on = bool(negs.extra_mask[i, j - w0])
                emb, cid = negs.extra[i, j - w0], int(negs.extra_ids[i, j - w0])
            if not on:
                continue
            s = float(negs.anchors[i] @ emb)
            if rule == "self-guided":
                drop = s > s_p + 0.1
            elif rule == "positive-aware":
                drop = not s < 0.95 * s_p
            else:  # oracle
                drop = int(LABELS[cid]) == int(LABELS[int(negs.anchor_ids[i])])
            keep[i, j] = not drop
    return keep


@pytest.mark.parametrize("form", ["mask", "index", "extra"])
@pytest.mark.parametrize("rule", ["self-guided", "positive-aware", "oracle"])
def test_each_filter_matches_its_loop_reference_on_every_form(form, rule):
    negs = _negs(form, seed=3)
    before = negs.selected().clone()
    out, counts = apply_filter(negs, rule, LABELS)
    want = _loop(negs, rule)
    assert torch.equal(out.selected(), want)
    assert not (want & ~before).any() and (before & ~want).any()  # removed some, added none
    removed = before & ~want
    fn = negs.label_match(LABELS)
    assert counts.tolist() == [int(removed.sum()), int((removed & fn).sum()),
                               int((before & fn).sum())]
    torch.testing.assert_close(out.similarity(), negs.similarity())  # the same candidates


def test_precision_and_recall_on_a_hand_worked_example():
    """One anchor (id 0, label 0) and four candidates: ids 2 and 5 share its label (false
    negatives), ids 1 and 4 do not. Cosines 0.9, 0.3, 0.8, 0.2 against a positive at 0.5:
    self-guided (drop s > 0.6) removes the candidates at 0.9 (id 2: a false negative) and 0.8
    (id 1: not one). Precision 1/2, recall 1/2 (id 5, at 0.3, is a false negative it kept);
    2 removed for 1 anchor."""
    def at(c: float) -> list[float]:
        return [c, math.sqrt(1 - c * c)]

    negs = Negatives(anchors=torch.tensor([[1.0, 0.0]]), positives=torch.tensor([at(0.5)]),
                     anchor_ids=torch.tensor([0]),
                     pool=torch.tensor([at(0.9), at(0.3), at(0.8), at(0.2)]),
                     pool_ids=torch.tensor([2, 5, 1, 4]), mask=torch.ones(1, 4, dtype=torch.bool))
    out, counts = apply_filter(negs, "self-guided", LABELS)
    assert out.selected().tolist() == [[False, True, False, True]]
    assert counts.tolist() == [2, 1, 2]
    m = filter_metrics(counts, anchors=1)
    assert m == {"filter_removed": 2.0, "filter_precision": 0.5, "filter_recall": 0.5}


def test_the_knob_is_strategy_fn_filter_and_checked():
    cfg = build_config("digits", "semi-hard", sets={"strategy.fn_filter": "self-guided"})
    assert cfg.fn_filter == "self-guided" and cfg.flat()["fn_filter"] == "self-guided"
    with pytest.raises(ConfigError, match="strategy.fn_filter must be one of none, "):
        build_config("digits", "semi-hard", sets={"strategy.fn_filter": "fnx"})
    with pytest.raises(ConfigError, match="strategy.fn_filter=NAME"):
        build_config("digits", "semi-hard", sets={"fn_filter": "oracle"})


SMALL = {"batch_size": "128", "eval.linear_epochs": "5"}


def test_real_runs_with_filters():
    """digits, a short budget: the oracle filter leaves no false negative at all (FNR 0, recall
    1, precision 1), and self-guided on semi-hard reports its precision and recall."""
    budget = build_config("digits", "in-batch").budget.__class__("samples", 2560)
    oracle = run(build_config("digits", "in-batch", budget=budget,
                              sets={**SMALL, "strategy.fn_filter": "oracle"}), track=False)
    m = oracle.metrics
    assert m["fnr"] == 0.0 and m["filter_recall"] == 1.0 and m["filter_precision"] == 1.0
    assert m["filter_removed"] > 10  # ~10% of 254 candidates per anchor share the class
    plain = run(build_config("digits", "in-batch", budget=budget, sets=SMALL), track=False)
    assert plain.metrics["fnr"] > 0.05 and "filter_removed" not in plain.metrics
    sg = run(build_config("digits", "semi-hard", budget=budget,
                          sets={**SMALL, "strategy.fn_filter": "self-guided"}), track=False)
    for k in ("filter_removed", "filter_precision", "filter_recall"):
        assert k in sg.metrics
    assert 0 <= sg.metrics["filter_recall"] <= 1


def test_the_report_shows_what_each_filter_removed(tmp_path):
    """The report's negatives-and-cost table has the filter's columns where a run has a filter:
    the oracle filter's row reads precision and recall 100, the unfiltered row '–'."""
    from negbench.reports.cli import generate

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    budget = build_config("digits", "in-batch").budget.__class__("samples", 1280)
    for flt in ("none", "oracle"):
        run(build_config("digits", "in-batch", budget=budget,
                         sets={**SMALL, "strategy.fn_filter": flt}),
            tracking_uri=uri, experiment="filters")
    md = (generate(uri, "filters", out=tmp_path / "rep").parent / "report.md").read_text()
    table = md.split("### Negatives and cost")[1].split("\n\n")[1].splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in table[2:]}
    prec, rec = head.index("filter precision (%)"), head.index("filter recall (%)")
    oracle = rows["in-batch x oracle (oracle reference)"]
    assert oracle[prec] == "100.0" and oracle[rec] == "100.0"
    assert rows["in-batch"][prec] == "–"
