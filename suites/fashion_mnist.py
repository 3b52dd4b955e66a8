"""``fashion-mnist``: Zalando's Fashion-MNIST (70,000 28x28 grey images, 10 classes).

The files are looked for in this order: the run's ``--data-dir``; Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``); torchvision's download into
``~/.cache/negbench/`` where a network exists. The official 10,000-image test split is the test
split; a stratified validation split is held out of the 60,000 training images.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import cache_dir, stratified_holdout
from negbench.suites.vision import AugmentConfig, SmallCNN, augment

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
HOW_TO_GET = ("get it with `apt-get install dataset-fashion-mnist` (Debian), pass --data-dir DIR "
              "holding the four idx files (.gz or not), or run once with a network so "
              "torchvision can download it")


@dataclass(frozen=True)
class FashionMNISTConfig:
    val_size: int = 5000
    split_seed: int = 0
    # 64 (256-d features): the trained in-batch encoder reaches 87.9% linear (86.0% at width 32
    # with twice the budget); see docs/decisions.md, "fashion-mnist: encoder width (issue 17)"
    width: int = 64
    proj_dim: int = 64
    classes: int = 10  # 10 classes, or 5 or 2 groups: see FashionMNIST.groupings
    stem_stride: int = 2  # 28x28 -> 14x14 in the first block: 4x fewer conv FLOPs on a CPU
    # features: the last 4x4 map average-pooled to pool x pool cells (1024-d at width 64). At 2
    # the trained in-batch encoder's kNN beats kNN on raw pixels (86.4% against 84.4%; global
    # pooling, 1, tied them) at the same cost; docs/decisions.md, "fashion-mnist: pooling"
    pool: int = 2
    download: bool = True  # try torchvision's download when no local copy is found
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        min_scale=0.6, rotate_deg=10.0, translate=0.1, hflip=True, jitter=0.4, noise=0.05))

    def __post_init__(self):
        if not 0 < self.val_size < 60000:
            raise SuiteError("fashion-mnist: val_size must lie in (0, 60000)")
        if self.pool not in (1, 2, 4):
            raise SuiteError(f"fashion-mnist: pool must be 1, 2 or 4 (cells of the last 4x4 "
                             f"map); got {self.pool}")


def _find(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register("fashion-mnist")
class FashionMNIST(Suite):
    Config = FashionMNISTConfig
    modality = "vision"
    source = "--data-dir, Debian dataset-fashion-mnist, or torchvision download"
    default_budget = ("samples", 300_000)  # 5.5 epochs, sized for a CPU
    default_batch_size = 256
    # suite.classes: coarser groupings of the 10 classes (indices into CLASSES), by garment
    # kind, so that the false-negative rate of uniform negatives (sum_g p_g^2 with balanced
    # classes) rises from 0.10 (10 classes) to 0.22 (5 groups) and 0.52 (2 groups)
    groupings = {
        10: tuple((name, (i,)) for i, name in enumerate(CLASSES)),
        5: (("tops", (0, 6)),                 # T-shirt/top, Shirt
            ("warm tops", (2, 4)),            # Pullover, Coat
            ("trousers & dresses", (1, 3)),   # Trouser, Dress
            ("footwear", (5, 7, 9)),          # Sandal, Sneaker, Ankle boot
            ("bags", (8,))),
        2: (("clothing", (0, 1, 2, 3, 4, 6)),
            ("footwear & bags", (5, 7, 8, 9))),
    }

    def _dir_with_files(self, d: Path) -> bool:
        return all(_find(d, stem) for stem in FILES.values())

    def locate(self) -> str:
        if self.data_dir is not None:
            d = Path(self.data_dir)
            if not d.is_dir() or not os.access(d, os.R_OK | os.X_OK):
                raise DataUnavailable(f"fashion-mnist: --data-dir {d} is not a readable directory")
            for sub in (d, d / "FashionMNIST" / "raw", d / "fashion-mnist"):
                if self._dir_with_files(sub):
                    return str(sub)
            raise DataUnavailable(f"fashion-mnist: no Fashion-MNIST idx files in --data-dir {d} "
                                  f"(expected {', '.join(FILES.values())}, optionally .gz)")
        for d in (Path(DEBIAN_DIR), cache_dir() / "FashionMNIST" / "raw"):
            if self._dir_with_files(d):
                return str(d)
        if self.cfg.download:
            return "torchvision download"
        raise DataUnavailable(f"fashion-mnist: data not found; {HOW_TO_GET}")

    def _download(self) -> Path:
        from torchvision.datasets import FashionMNIST as TVFashion

        try:
            TVFashion(str(cache_dir()), train=True, download=True)
            TVFashion(str(cache_dir()), train=False, download=True)
        except Exception as e:  # no network, or a broken mirror
            raise DataUnavailable(f"fashion-mnist: data not found and the download failed "
                                  f"({type(e).__name__}); {HOW_TO_GET}") from None
        return cache_dir() / "FashionMNIST" / "raw"

    def _load(self) -> SuiteData:
        where = self.locate()
        d = self._download() if where == "torchvision download" else Path(where)
        arr = {k: _read_idx(_find(d, stem)) for k, stem in FILES.items()}
        ytr = arr["train_y"].astype(np.int64)
        tr, va = stratified_holdout(np.arange(len(ytr)), ytr, self.cfg.val_size / len(ytr),
                                    self.cfg.split_seed)
        x = torch.from_numpy(arr["train_x"].copy())[:, None]  # (60000, 1, 28, 28) uint8
        y = torch.from_numpy(ytr)
        xt = torch.from_numpy(arr["test_x"].copy())[:, None]
        yt = torch.from_numpy(arr["test_y"].astype(np.int64))
        src = torch.from_numpy(np.concatenate([tr, va]))  # the test images follow the 60,000
        test_src = len(ytr) + torch.arange(len(yt))
        return SuiteData(train=Split(x[tr], y[tr], src[:len(tr)]),
                         val=Split(x[va], y[va], src[len(tr):]),
                         test=Split(xt, yt, test_src), n_classes=10, class_names=CLASSES)

    def prepare(self, x: Tensor) -> Tensor:
        return x.float() / 255.0

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment(self.prepare(x), self.cfg.augment, generator)

    def build_encoder(self) -> nn.Module:
        return SmallCNN(1, self.cfg.width, self.cfg.proj_dim, self.cfg.stem_stride, self.cfg.pool)
