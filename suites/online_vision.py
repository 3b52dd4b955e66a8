"""``cifar10``, ``cifar100``, ``stl10``: the vision datasets contrastive papers publish on, for
users with a GPU and a network. A ResNet-18 with the CIFAR stem encodes them and SimCLR's
augmentations make the views, on the device (``suites/resnet.py``, ``suites/simclr_augment.py``).

The files are looked for in this order, in torchvision's own layouts
(``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``, or the ``.tar.gz`` archive
that holds them):

1. the run's ``--data-dir`` (the folder itself, or a directory holding it or its archive);
2. the cache, ``~/.cache/negbench/`` (the environment variable ``NEGBENCH_CACHE`` overrides);
3. torchvision's download into that cache, where the download host can be reached
   (``suite.download=false`` turns this off).

Offline and absent, :meth:`locate` raises :class:`DataUnavailable` with one line that names
where it looked and how to get the files. :meth:`data_status` never touches the network: it
says ``present`` only when the files are on disk, so the default tests, which run every suite
whose data is present, never download these.

The files are read directly (CIFAR's pickled batches, STL-10's raw binaries), not through the
torchvision dataset classes, whose md5 checks would refuse a copy made elsewhere. NOTE: CIFAR's
batches are Python pickles, which can run code when loaded: point ``--data-dir`` only at copies
you trust (the download is checked against torchvision's md5).

Images are stored as uint8 (N, 3, H, W); the official test split is the test split; a stratified
validation split (``val_size`` images) is held out of the training split, fixed by ``split_seed``.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn

from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import cache_dir, stratified_holdout
from negbench.suites.resnet import STEMS, ResNet18
from negbench.suites.simclr_augment import SimCLRAugmentConfig, simclr_augment

DOWNLOAD = "torchvision download"


@dataclass(frozen=True)
class Source:
    """One dataset's on-disk layout and where to get it."""

    folder: str  # the folder the archive extracts to
    files: tuple[str, ...]  # files the folder must hold
    archive: str
    url: str
    size: str  # the archive's size, for the message
    torchvision: str  # the torchvision.datasets class that downloads it


CIFAR10_SOURCE = Source(
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "163 MB", "CIFAR10")
CIFAR100_SOURCE = Source(
    "cifar-100-python", ("train", "test", "meta"),
    "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "161 MB", "CIFAR100")
STL10_SOURCE = Source(
    "stl10_binary", ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"),
    "stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "2.5 GB", "STL10")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens (True when a proxy is configured: the
    download then goes through it, and its failure is reported then)."""
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
                                       "all_proxy", "ALL_PROXY")):
        return True
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class OnlineVisionConfig:
    val_size: int = 5000  # held out of the training split, stratified
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    stem: str = "cifar"  # cifar: 3x3 stride-1 conv, no max-pool | imagenet: 7x7/2 + max-pool
    width: int = 64  # ResNet-18's first-stage width (64 in the paper)
    proj_hidden: int = 512
    proj_dim: int = 128
    download: bool = True  # try torchvision's download when no local copy is found
    # NOTE: SimCLR crops CIFAR with scale (0.08, 1); at 32x32 a 0.08 crop is a 9x9 patch blown up
    # to 32x32, mostly blur. 0.2, the floor most CIFAR recipes since MoCo v2 use, keeps views
    # recognisable; set suite.augment.min_scale=0.08 for the paper's value.
    augment: SimCLRAugmentConfig = field(
        default_factory=lambda: SimCLRAugmentConfig(min_scale=0.2, strength=0.5))

    def __post_init__(self):
        if self.val_size < 1:
            raise SuiteError(f"val_size must be >= 1; got {self.val_size}")
        if self.stem not in STEMS:
            raise SuiteError(f"stem must be one of {', '.join(STEMS)}; got {self.stem!r}")
        if min(self.width, self.proj_hidden, self.proj_dim) < 1:
            raise SuiteError("width, proj_hidden and proj_dim must be >= 1")


@dataclass(frozen=True)
class CIFAR10Config(OnlineVisionConfig):
    pass


@dataclass(frozen=True)
class CIFAR100Config(OnlineVisionConfig):
    labels: str = "fine"  # fine: 100 classes | coarse: the 20 superclasses

    def __post_init__(self):
        super().__post_init__()
        if self.labels not in ("fine", "coarse"):
            raise SuiteError(f"labels must be fine or coarse; got {self.labels!r}")


@dataclass(frozen=True)
class STL10Config(OnlineVisionConfig):
    val_size: int = 500  # of the 5,000 labelled training images
    # SimCLR's ImageNet recipe for the larger 96x96 images: the paper's crop scale, and blur
    augment: SimCLRAugmentConfig = field(
        default_factory=lambda: SimCLRAugmentConfig(min_scale=0.08, strength=0.5, blur_p=0.5))


class OnlineVisionSuite(Suite):
    """Shared by the three: locating and fetching the files, the split, views and encoder.
    A subclass sets ``data_source`` and implements :meth:`_read`."""

    data_source: ClassVar[Source]
    modality = "vision"
    offline = False  # downloads, or files passed with --data-dir
    source = "torchvision download (network) or --data-dir"
    default_batch_size = 512

    # -- where the files are
    def _roots(self) -> list[Path]:
        roots = [Path(self.data_dir)] if self.data_dir is not None else []
        return roots + [cache_dir()]

    def _find_local(self) -> Path | None:
        """The extracted folder, else the archive, in --data-dir then the cache."""
        src = self.data_source
        for root in self._roots():
            for d in (root / src.folder, root):
                if all((d / f).is_file() for f in src.files):
                    return d
        for root in self._roots():
            if (root / src.archive).is_file():
                return root / src.archive
        return None

    def _missing(self, why: str) -> str:
        src = self.data_source
        looked = f"--data-dir {self.data_dir} nor " if self.data_dir is not None else ""
        return (f"{self.name}: not in {looked}{cache_dir()} ({why}): fetch {src.url} "
                f"({src.size}) into --data-dir (the archive or its {src.folder}/), or run with a "
                f"network to download it")

    def data_status(self) -> str:
        """'present' when the files (or their archive) are on disk, else the one-line reason;
        never touches the network, so it is fast and never starts a download."""
        if self._find_local() is not None:
            return "present"
        return self._missing("not downloaded yet" if self.cfg.download else
                             "suite.download is off")

    def locate(self) -> str:
        local = self._find_local()
        if local is not None:
            return str(local)
        if not self.cfg.download:
            raise DataUnavailable(self._missing("suite.download is off"))
        if not reachable(self.data_source.url):
            raise DataUnavailable(self._missing("offline: cannot reach "
                                                f"{urlparse(self.data_source.url).hostname}"))
        return DOWNLOAD

    def _folder(self) -> Path:
        """The extracted folder, downloading or extracting into the cache first if need be."""
        src = self.data_source
        where = self.locate()
        cache = cache_dir()
        try:
            if where == DOWNLOAD:
                import torchvision.datasets as tvd

                cache.mkdir(parents=True, exist_ok=True)
                kw = {"split": "test"} if src.torchvision == "STL10" else {"train": False}
                getattr(tvd, src.torchvision)(str(cache), download=True, **kw)
            elif where.endswith(src.archive):
                from torchvision.datasets.utils import extract_archive

                cache.mkdir(parents=True, exist_ok=True)
                extract_archive(where, str(cache))
            else:
                return Path(where)
        except Exception as e:  # no network after all, a broken mirror, a bad archive, a full disk
            step = "download" if where == DOWNLOAD else "extracting"
            raise DataUnavailable(self._missing(f"{step} failed: {type(e).__name__}")) from None
        d = cache / src.folder
        if not all((d / f).is_file() for f in src.files):
            raise DataUnavailable(self._missing(f"{where} did not give {', '.join(src.files)}"))
        return d

    # -- loading
    def _read(self, d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                      tuple[str, ...]]:
        """(train_x (N, 3, H, W) uint8, train_y (N,) int64, test_x, test_y, class names)."""
        raise NotImplementedError

    def _load(self) -> SuiteData:
        d = self._folder()
        try:
            xtr, ytr, xte, yte, classes = self._read(d)
        except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
            if isinstance(e, SuiteError):
                raise
            raise SuiteError(f"{self.name}: cannot read {d} ({type(e).__name__}: {e}); expected "
                             f"torchvision's {self.data_source.folder}/ layout") from None
        c, n = len(classes), len(ytr)
        for what, y in (("training", ytr), ("test", yte)):
            if len(y) and not (0 <= y.min() and y.max() < c):
                raise SuiteError(f"{self.name}: {what} labels outside 0..{c - 1}")
        if not c <= self.cfg.val_size <= n - c:
            raise SuiteError(f"{self.name}: val_size {self.cfg.val_size} must lie in [{c}, {n - c}]"
                             f" (at least one image of each of the {c} classes on each side)")
        tr, va = stratified_holdout(np.arange(n), ytr, self.cfg.val_size / n, self.cfg.split_seed)
        x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
        # source ids: the official training images 0..n-1, then the test images after them
        test_src = n + torch.arange(len(yte))
        return SuiteData(train=Split(x[tr], y[tr], torch.from_numpy(tr)),
                         val=Split(x[va], y[va], torch.from_numpy(va)),
                         test=Split(torch.from_numpy(xte), torch.from_numpy(yte), test_src),
                         n_classes=c, class_names=classes)

    # -- views and encoder
    def prepare(self, x: Tensor) -> Tensor:
        return x.float() / 255.0

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return simclr_augment(self.prepare(x), self.cfg.augment, generator)

    def build_encoder(self) -> nn.Module:
        c = self.cfg
        return ResNet18(c.stem, c.width, c.proj_hidden, c.proj_dim)


# --------------------------------------------------------------------------- readers
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise SuiteError(f"{path}: expected CIFAR rows of 3072 bytes, got shape {data.shape}")
    return data.reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32, row-major


def _cifar(d: Path, files: list[str], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        b = _unpickle(d / name)
        xs.append(_cifar_images(b, d / name))
        ys.append(np.asarray(b[key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _stl_images(path: Path) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8)
    per = 3 * 96 * 96
    if raw.size % per:
        raise SuiteError(f"{path}: {raw.size} bytes is not a whole number of 96x96 RGB images")
    # each image is stored channel by channel, column-major: (3, W, H) -> (3, H, W)
    return np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))


def _stl_labels(path: Path, n: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
    if y.shape[0] != n:
        raise SuiteError(f"{path}: {y.shape[0]} labels for {n} images")
    return y


# --------------------------------------------------------------------------- the suites
@register("cifar10")
class CIFAR10(OnlineVisionSuite):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test 32x32 colour images,
    10 classes. Default budget: 100 epochs of the 45,000 training images left after the
    validation split (4.5M samples; SimCLR's CIFAR-10 results train for up to 1,000 epochs, a
    compute an ablation of ten strategies times several seeds cannot afford), batch 512."""

    Config = CIFAR10Config
    data_source = CIFAR10_SOURCE
    default_budget = ("samples", 4_500_000)

    def _read(self, d: Path):
        xtr, ytr = _cifar(d, [f"data_batch_{i}" for i in range(1, 6)], "labels")
        xte, yte = _cifar(d, ["test_batch"], "labels")
        classes = tuple(_unpickle(d / "batches.meta")["label_names"])
        return xtr, ytr, xte, yte, classes


@register("cifar100")
class CIFAR100(OnlineVisionSuite):
    """CIFAR-100 (Krizhevsky 2009): 50,000 training and 10,000 test 32x32 colour images,
    100 classes (``labels=coarse``: their 20 superclasses, as oracle labels for the FNR and for
    evaluation). Default budget: 100 epochs of the 45,000 training images (4.5M samples),
    batch 512."""

    Config = CIFAR100Config
    data_source = CIFAR100_SOURCE
    default_budget = ("samples", 4_500_000)

    def _read(self, d: Path):
        key = f"{self.cfg.labels}_labels"
        xtr, ytr = _cifar(d, ["train"], key)
        xte, yte = _cifar(d, ["test"], key)
        classes = tuple(_unpickle(d / "meta")[f"{self.cfg.labels}_label_names"])
        return xtr, ytr, xte, yte, classes


@register("stl10")
class STL10(OnlineVisionSuite):
    """STL-10 (Coates et al. 2011): 96x96 colour images, 10 classes; its labelled training split
    (5,000) and test split (8,000). Default budget: 200 epochs of the 4,500 training images left
    after the validation split (900k samples), batch 512. With the CIFAR stem a 96x96 image
    costs about 9x a CIFAR one (10 GFLOPs forward) and keeps about 40 MB of activations for
    the backward pass: batch 512 (1,024 views) needs about 40 GB of GPU memory in float32;
    ``suite.stem=imagenet`` is 15x cheaper. The 100,000 unlabelled images are not part of a run
    (the harness needs oracle labels on the training split, for the FNR and for evaluation);
    :meth:`load_unlabeled` reads them."""

    Config = STL10Config
    data_source = STL10_SOURCE
    default_budget = ("samples", 900_000)

    def _read(self, d: Path):
        xtr, xte = _stl_images(d / "train_X.bin"), _stl_images(d / "test_X.bin")
        ytr, yte = _stl_labels(d / "train_y.bin", len(xtr)), _stl_labels(d / "test_y.bin", len(xte))
        classes = tuple(s.strip() for s in (d / "class_names.txt").read_text().splitlines()
                        if s.strip())
        return xtr, ytr, xte, yte, classes

    def load_unlabeled(self) -> Tensor:
        """The unlabelled split, (100000, 3, 96, 96) uint8, from the same folder."""
        path = self._folder() / "unlabeled_X.bin"
        if not path.is_file():
            raise DataUnavailable(f"stl10: no unlabeled_X.bin next to the labelled files in "
                                  f"{path.parent}; it comes in {self.data_source.url}")
        return torch.from_numpy(_stl_images(path))
