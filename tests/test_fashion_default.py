"""Issue 17, point 2: fashion-mnist at its default budget measures representation quality: the
trained in-batch encoder beats its untrained floor and kNN on raw pixels, and reaches 87%
linear-probe accuracy on the official test split. Slow (one default-budget run: 5 to 8 minutes
on 2 CPU cores of the slower machine kind), so kept out of the default run:
`pytest -m slow tests/test_fashion_default.py`."""

from __future__ import annotations

import pytest

from negbench import suites
from negbench.harness.config import build_config
from negbench.harness.runner import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metrics():
    if suites.create("fashion-mnist").data_status() != "present":
        pytest.skip("fashion-mnist data not installed (apt-get install dataset-fashion-mnist)")
    return run(build_config("fashion-mnist", "in-batch", seed=0), track=False).metrics


def test_in_batch_reaches_87_percent_linear_and_beats_its_floors(metrics):
    assert metrics["linear_acc"] >= 0.87, metrics["linear_acc"]
    assert metrics["linear_acc"] > metrics["floor_linear_acc"] + 0.02
    assert metrics["knn_acc"] > metrics["floor_knn_acc"] + 0.02


def test_in_batch_knn_beats_raw_pixel_knn(metrics):
    assert metrics["knn_acc"] > metrics["raw_knn_acc"] + 0.005
