"""The small CNN's pooled features (``pool``): their size, their relation to global pooling, and the
fashion-mnist suite's choice (2x2 cells of the last 4x4 map)."""

from __future__ import annotations

import pytest
import torch

from negbench import suites
from negbench.suites.vision import SmallCNN


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_pooled_features_have_the_declared_size_and_average_to_the_global_pool(pool):
    torch.manual_seed(0)
    enc = SmallCNN(1, width=8, proj_dim=16, stem_stride=2, pool=pool).eval()
    x = torch.rand(5, 1, 28, 28)
    f = enc.features(x)
    assert enc.feature_dim == 4 * 8 * pool * pool and f.shape == (5, enc.feature_dim)
    assert enc(x).shape == (5, 16)
    # the last map is 4x4: the mean of its pool x pool cells is its global mean, per channel
    cells = f.view(5, 4 * 8, pool * pool).mean(dim=2)
    glob = enc.backbone[:-2](x).mean(dim=(2, 3))
    torch.testing.assert_close(cells, glob)


def test_fashion_mnist_pools_to_2x2_cells_and_refuses_other_grids():
    cfg = suites.get("fashion-mnist").Config()
    assert cfg.pool == 2
    enc = suites.create("fashion-mnist").build_encoder()
    assert enc.feature_dim == 4 * cfg.width * 4
    with pytest.raises(suites.SuiteError, match="pool must be 1, 2 or 4"):
        suites.get("fashion-mnist").Config(pool=3)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        SmallCNN(pool=0)
