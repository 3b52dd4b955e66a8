"""``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, 10 classes),
shipped inside the scikit-learn wheel, so it works with no network."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from negbench.suites import Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import stratified_holdout
from negbench.suites.vision import AugmentConfig, SmallCNN, augment


@dataclass(frozen=True)
class DigitsConfig:
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    width: int = 32
    proj_dim: int = 64
    classes: int = 10  # 10 digits, or 2 groups (0-4, 5-9): see Digits.groupings
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        min_scale=0.7, rotate_deg=12.0, translate=0.12, jitter=0.3, noise=0.05))

    def __post_init__(self):
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise SuiteError("digits: val_fraction and test_fraction must lie in (0, 1) "
                             "and sum to less than 1")


@register("digits")
class Digits(Suite):
    Config = DigitsConfig
    modality = "vision"
    source = "scikit-learn load_digits (in the wheel)"
    default_budget = ("samples", 60_000)
    default_batch_size = 256
    # suite.classes: a coarser grouping has more false negatives among uniform negatives (with
    # the digits' near-uniform classes, expected FNR ~0.1 at 10 groups and ~0.5 at 2)
    groupings = {
        10: tuple((str(i), (i,)) for i in range(10)),
        2: (("0-4", (0, 1, 2, 3, 4)), ("5-9", (5, 6, 7, 8, 9))),
    }

    def _load(self) -> SuiteData:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.uint8))[:, None]  # (N, 1, 8, 8), values 0..16
        y = torch.from_numpy(d.target.astype(np.int64))
        c = self.cfg
        rest, te = stratified_holdout(np.arange(len(y)), d.target, c.test_fraction, c.split_seed)
        tr, va = stratified_holdout(rest, d.target, c.val_fraction / (1 - c.test_fraction),
                                    c.split_seed)
        return SuiteData(
            train=Split(x[tr], y[tr], torch.from_numpy(tr)),
            val=Split(x[va], y[va], torch.from_numpy(va)),
            test=Split(x[te], y[te], torch.from_numpy(te)),
            n_classes=10, class_names=tuple(str(i) for i in range(10)),
        )

    def prepare(self, x: Tensor) -> Tensor:
        return x.float() / 16.0

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment(self.prepare(x), self.cfg.augment, generator)

    def build_encoder(self) -> nn.Module:
        return SmallCNN(1, self.cfg.width, self.cfg.proj_dim)
