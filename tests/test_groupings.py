"""``suite.classes=K``: the grouping tables, the regrouped labels of real data, bad values."""

from __future__ import annotations

import pytest
import torch

from negbench import suites
from negbench.harness.config import ConfigError, build_config
from negbench.suites.base import group_table

GROUPED = [n for n in suites.names() if suites.get(n).groupings]


def test_the_vision_suites_declare_their_groupings():
    assert {"digits", "fashion-mnist"} <= set(GROUPED)
    assert set(suites.get("digits").groupings) == {10, 2}
    assert set(suites.get("fashion-mnist").groupings) == {10, 5, 2}


@pytest.mark.parametrize("name", GROUPED)
def test_every_grouping_covers_every_class_exactly_once(name):
    cls = suites.get(name)
    native = max(cls.groupings)
    assert cls.Config().classes == native  # the default is the suite's own classes
    for k, groups in cls.groupings.items():
        assert len(groups) == k
        members = sorted(c for _, m in groups for c in m)
        assert members == list(range(native)), (k, members)
        assert len({g for g, _ in groups}) == k  # distinct names
        table = group_table(groups, native)
        assert table.unique().tolist() == list(range(k))
    assert all(len(m) == 1 for _, m in cls.groupings[native])


def test_group_table_rejects_a_class_twice_or_missing():
    with pytest.raises(suites.SuiteError, match="two groups"):
        group_table((("a", (0, 1)), ("b", (1, 2))), 3)
    with pytest.raises(suites.SuiteError, match="out"):
        group_table((("a", (0,)), ("b", (1,))), 3)


def test_real_digits_labels_are_regrouped_in_every_split():
    fine = suites.create("digits").load()
    coarse = suites.create("digits", suites.get("digits").Config(classes=2)).load()
    assert coarse.n_classes == 2 and coarse.class_names == ("0-4", "5-9")
    for s in ("train", "val", "test"):
        a, b = fine.split(s), coarse.split(s)
        assert torch.equal(a.x, b.x)
        assert torch.equal(b.y, (a.y >= 5).long())
    assert torch.equal(fine.train.y, suites.create("digits").load().train.y)


def test_a_grouping_the_suite_lacks_is_one_clear_error():
    with pytest.raises(ConfigError, match="suite.classes must be one of 2, 10"):
        build_config("digits", "in-batch", sets={"suite.classes": "3"})
