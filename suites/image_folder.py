"""``image-folder``: the user's own images, in torchvision's ``ImageFolder`` layout.

Give the folder with ``--set suite.root=PATH``. Two layouts are read:

- ``ROOT/CLASS/*.png`` (one folder per class): a stratified split, fixed by ``split_seed``,
  holds out ``test_fraction`` of the images for the test split and ``val_fraction`` for the
  validation split (70/10/20 by default, as ``digits``);
- ``ROOT/train/CLASS/...`` with ``ROOT/val/CLASS/...`` and ``ROOT/test/CLASS/...``: each
  split folder that is there is that split; a missing ``val/`` or ``test/`` is held out of
  ``train/`` (stratified, the same fractions, now of ``train/``'s images). The classes are
  the union over the split folders, with one index mapping for all of them; a class with
  images in ``val/`` or ``test/`` but none in ``train/`` is an error. The layout is chosen
  when ``ROOT/train/`` holds class folders; its other folders must then be ``val/``, ``test/``.

As in torchvision, the class names are the sorted class-folder names (index = position), and
each class folder is walked recursively (following links). Files are images by extension,
case-insensitively: .bmp .jpeg .jpg .pgm .png .ppm .tif .tiff .webp (torchvision's list);
other files are ignored. NOTE: unlike torchvision, names starting with a dot (``.git``,
``.ipynb_checkpoints``, macOS's ``._x.jpg``) are skipped, folders and files alike.

Loading reads each file once with PIL (decoding in a thread pool; JPEGs are decoded at a
reduced scale when that still covers ``size``), scales the shorter side to ``size`` and crops
the centre square (PIL's ``ImageOps.fit``, bilinear with antialiasing; square images are only
resized), and stores uint8 (N, C, size, size), like the other image suites. ``channels``:
``grey`` (C=1, colour converted to luma), ``rgb`` (C=3, grey repeated), or ``auto``: grey
when every file is stored grey (PIL modes 1, L, LA, I, I;16, F), else rgb. 16-bit grey is
scaled to 8 bits (PIL's own conversion would clip it).

A file that cannot be decoded is skipped and counted: one warning line (logger
``negbench.suites.image_folder``) gives the count and two example paths; when no file can be
read, the load fails with one line. ``Split.source`` is each image's index in the folder's
sorted file list (split folder, class, path), unreadable files included, so ids are stable.

Cache (``cache=true``, the default): the decoded array is kept in
``$NEGBENCH_CACHE/image-folder/`` (default ``~/.cache/negbench/image-folder/``), one ``.npz``
per folder, ``size`` and ``channels``, keyed also on every file's relative path, byte size and
modification time: the runs of an ablation decode the folder once, and any added, removed or
rewritten file means a fresh decode, whose file replaces the stale one. Safe to delete.

Views: SimCLR's augmentations, batched on the device (``suites/simclr_augment.py``, as the
online suites; ``suite.augment.*``) for colour images; for grey images (C=1) the small grey
suites' recipe (``suites/vision.py``: crop, rotation, translation, jitter, noise;
``suite.grey_augment.*``), which needs no colour and costs a third of the pixels. Encoders:
``small-cnn`` (``suites/vision.py``, width 32 unless set) or ``resnet18`` (``suites/resnet.py``,
the CIFAR stem for small images, ``stem=imagenet`` for large ones; width 64 unless set).

No data ships: the suite is ``offline = False`` and, with no ``suite.root``, says how to give
one. The default budget (100,000 samples, batch 256: 80 epochs of 1,250 training images) is a
guess for a small folder on a CPU; set ``--budget samples=EPOCHS*TRAIN_IMAGES`` for yours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from negbench import atomic_path
from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import cache_dir, stratified_holdout
from negbench.suites.resnet import STEMS, ResNet18
from negbench.suites.simclr_augment import SimCLRAugmentConfig, simclr_augment
from negbench.suites.vision import AugmentConfig, SmallCNN, augment

log = logging.getLogger(__name__)

NAME = "image-folder"
EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
CHANNELS = ("auto", "rgb", "grey")
ENCODERS = ("small-cnn", "resnet18")
DEFAULT_WIDTH = {"small-cnn": 32, "resnet18": 64}
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
CACHE_FORMAT = 1  # bump when what a cache file holds, or how images are decoded, changes
HOW = ("pass --set suite.root=PATH, a folder of class folders of images (ROOT/CLASS/*.png|jpg, "
       "torchvision's ImageFolder layout; or ROOT/train|val|test/CLASS/...)")


@dataclass(frozen=True)
class ImageFolderConfig:
    root: str = ""  # the folder; required
    size: int = 32  # every image is resized once, on load, to size x size
    channels: str = "auto"  # auto | rgb | grey
    encoder: str = "small-cnn"  # small-cnn | resnet18
    width: int = 0  # 0: the encoder's usual width (small-cnn 32, resnet18 64)
    proj_dim: int = 128
    stem: str = "cifar"  # resnet18: cifar (3x3/1, no max-pool) | imagenet (7x7/2 + max-pool)
    stem_stride: int = 1  # small-cnn: 2 halves the first block's resolution (size >= 64)
    val_fraction: float = 0.1  # of the images (of train/'s, when held out of it)
    test_fraction: float = 0.2
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    min_per_class: int = 10  # images a class needs (in train/, with split folders)
    cache: bool = True  # keep the decoded images under $NEGBENCH_CACHE/image-folder/
    # colour images: SimCLR's CIFAR recipe as the online suites use it (crop scale from 0.2,
    # colour strength 0.5, no blur; suite.augment.blur_p=0.5 is the paper's ImageNet setting)
    augment: SimCLRAugmentConfig = field(
        default_factory=lambda: SimCLRAugmentConfig(min_scale=0.2, strength=0.5))
    grey_augment: AugmentConfig = field(default_factory=AugmentConfig)  # grey images (C=1)

    def __post_init__(self):
        if self.size < 4:
            raise SuiteError(f"{NAME}: size must be >= 4; got {self.size}")
        if self.channels not in CHANNELS:
            raise SuiteError(f"{NAME}: channels must be one of {', '.join(CHANNELS)}; got "
                             f"{self.channels!r}")
        if self.encoder not in ENCODERS:
            raise SuiteError(f"{NAME}: encoder must be one of {', '.join(ENCODERS)}; got "
                             f"{self.encoder!r}")
        if self.stem not in STEMS:
            raise SuiteError(f"{NAME}: stem must be one of {', '.join(STEMS)}; got {self.stem!r}")
        if self.width < 0 or self.proj_dim < 1 or self.stem_stride not in (1, 2):
            raise SuiteError(f"{NAME}: need width >= 0 (0: the encoder's own), proj_dim >= 1 "
                             "and stem_stride 1 or 2")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise SuiteError(f"{NAME}: val_fraction and test_fraction must lie in (0, 1) and "
                             "sum to less than 1")
        if self.min_per_class < 1:
            raise SuiteError(f"{NAME}: min_per_class must be >= 1; got {self.min_per_class}")


# --------------------------------------------------------------------------- the folder
def _visible(name: str) -> bool:
    return not name.startswith(".")


def _subdirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and _visible(e.name))


def _images_under(d: Path) -> list[Path]:
    """The image files under ``d``, recursively (links followed, as torchvision does), sorted
    by their path relative to ``d``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        dirnames[:] = [n for n in dirnames if _visible(n)]
        out += [Path(dirpath, f) for f in filenames
                if _visible(f) and f.lower().endswith(EXTENSIONS)]
    return sorted(out, key=lambda p: p.relative_to(d).as_posix())


@dataclass
class Listing:
    """Every image file of the folder, in source order: split folder (train, val, test; one
    None part without split folders), class name, path."""

    root: Path
    layout: bool  # train/ val/ test/ split folders
    classes: tuple[str, ...]
    files: list[Path]
    label: np.ndarray  # (F,) int64 class index
    part: np.ndarray  # (F,) int64 index into SPLITS (0 for every file without split folders)
    parts: tuple[str, ...]  # the split folders there (empty without split folders)


def scan(root: Path) -> Listing:
    """List the folder; raise SuiteError (one line) when it holds no images in either layout."""
    top = _subdirs(root)
    layout = "train" in top and bool(_subdirs(root / "train"))
    if layout:
        others = [d for d in top if d not in SPLITS]
        if others:
            raise SuiteError(f"{NAME}: {root} holds train/ and also {others[0]}/: with split "
                             "folders, every class folder lies inside train/, val/ or test/")
        parts = tuple(s for s in SPLITS if s in top)
        dirs = {s: root / s for s in parts}
    else:
        parts, dirs = (), {None: root}
    per = {s: {c: _images_under(d / c) for c in _subdirs(d)} for s, d in dirs.items()}
    classes = tuple(sorted({c for by_class in per.values() for c in by_class}))
    if not classes:
        loose = len(_images_under(root))
        extra = (f"; its {loose} image files must lie in one folder per class (ROOT/CLASS/...)"
                 if loose else "")
        raise SuiteError(f"{NAME}: {root} has no class folders{extra}; {HOW}")
    index = {c: i for i, c in enumerate(classes)}
    files, label, part = [], [], []
    for s, by_class in per.items():
        for c, paths in by_class.items():
            files += paths
            label += [index[c]] * len(paths)
            part += [SPLITS.index(s) if s else 0] * len(paths)
    if not files:
        where = ", ".join(f"{s}/" for s in parts) or f"the {len(classes)} class folders"
        raise SuiteError(f"{NAME}: no image files ({' '.join(EXTENSIONS)}) in {where} of {root}")
    return Listing(root, layout, classes, files, np.array(label, dtype=np.int64),
                   np.array(part, dtype=np.int64), parts)


# --------------------------------------------------------------------------- decoding
def _as_8bit_grey(im):
    """An L image of any grey mode; 16-bit and 32-bit integer grey are taken as 0..65535 and
    scaled (PIL's convert('L') clips them at 255), float grey is clipped to 0..255."""
    from PIL import Image

    if im.mode in ("1", "L", "LA", "La"):
        return im.convert("L")
    a = np.asarray(im, dtype=np.float64)
    if im.mode != "F":
        a = a / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def decode(path: Path, size: int, channels: str) -> tuple[np.ndarray | None, bool, str]:
    """(the image as uint8 (size, size) or (size, size, 3), whether its file is in a colour
    mode, '') or (None, False, why it cannot be read). ``channels``: rgb, grey or auto (auto:
    grey files stay grey, the others become RGB)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            colour = im.mode not in GREY_MODES
            # JPEG: decode at 1/2, 1/4 or 1/8 scale where both sides stay >= size (fast)
            im.draft(im.mode, (size, size))
            grey = channels == "grey" or (channels == "auto" and not colour)
            im = (im.convert("L") if colour else _as_8bit_grey(im)) if grey else (
                im.convert("RGB") if colour else _as_8bit_grey(im).convert("RGB"))
            im = ImageOps.fit(im, (size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8), colour, ""
    except Exception as e:  # any failure to decode (not an image, truncated, too large, ...)
        why = " ".join(str(e).replace(repr(str(path)), "").replace(str(path), "").split())
        why = why.rstrip(": ")  # what is left of "...: 'PATH'" once the path is cut out
        return None, False, why or type(e).__name__


def decode_all(files: list[Path], size: int, channels: str
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(x (R, C, size, size) uint8 of the R readable files, their (R,) positions in ``files``,
    [(path, why)] of the others). Decoding runs in a thread pool (PIL releases the GIL)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        out = list(pool.map(lambda p: decode(p, size, channels), files, chunksize=64))
    ok = np.array([a is not None for a, _, _ in out], dtype=bool)
    bad = [(str(p), why) for p, (a, _, why) in zip(files, out, strict=True) if a is None]
    arrays = [a for a, _, _ in out if a is not None]
    if not arrays:
        return np.zeros((0, 1, size, size), np.uint8), np.zeros(0, np.int64), bad
    colour = any(c for a, c, _ in out if a is not None)
    if channels == "rgb" or (channels == "auto" and colour):
        # (auto) the grey files of a folder that also holds colour ones: luma on all three
        x = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays])
        x = x.transpose(0, 3, 1, 2)  # (R, 3, S, S)
    else:
        x = np.stack(arrays)[:, None]  # (R, 1, S, S)
    return np.ascontiguousarray(x), np.flatnonzero(ok).astype(np.int64), bad


def files_digest(root: Path, files: list[Path]) -> str:
    """A hash of every file's relative path, byte size and mtime (not their bytes: reading
    every image to hash it would cost as much as decoding them)."""
    h = hashlib.sha256()
    for p in files:
        try:
            st = p.stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # a dangling link: unreadable, and counted so when decoded
            stamp = "-"
        h.update(f"\0{p.relative_to(root).as_posix()}\0{stamp}".encode())
    return h.hexdigest()


def cache_file(root: Path, digest: str, size: int, channels: str) -> Path:
    """``$NEGBENCH_CACHE/image-folder/SETTING-FILES.npz``: SETTING hashes the folder's path,
    ``size`` and ``channels``; FILES is the folder's :func:`files_digest`."""
    setting = json.dumps([CACHE_FORMAT, str(root), size, channels]).encode()
    name = f"{hashlib.sha256(setting).hexdigest()[:16]}-{digest[:24]}.npz"
    return cache_dir() / NAME / name


def _read_cache(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            bad = [(str(p), str(w)) for p, w in zip(z["bad_path"], z["bad_why"], strict=True)]
            return z["x"], z["readable"], bad
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, or written by a process that died: decode afresh


def _write_cache(path: Path, x: np.ndarray, readable: np.ndarray, bad: list) -> None:
    """Written to a temporary file and renamed, so a concurrent run never reads half a file;
    a cache that cannot be written (read-only home, full disk) is only a slower next load."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x, readable=readable,
                     bad_path=np.array([p for p, _ in bad], dtype=str),
                     bad_why=np.array([w for _, w in bad], dtype=str))
        setting = path.name.split("-")[0]
        for old in path.parent.glob(f"{setting}-*.npz"):  # the same folder before it changed
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass


# --------------------------------------------------------------------------- the suite
@register(NAME)
class ImageFolder(Suite):
    Config = ImageFolderConfig
    modality = "vision"
    offline = False  # the user's own files
    source = "your folder: --set suite.root=PATH (ROOT/CLASS/*.png|jpg)"
    default_budget = ("samples", 100_000)
    default_batch_size = 256

    def locate(self) -> str:
        c = self.cfg
        if not c.root:
            raise DataUnavailable(f"{NAME}: no folder given; {HOW}")
        root = Path(c.root).expanduser()
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise DataUnavailable(f"{NAME}: suite.root {root} {what}; {HOW}")
        if not os.access(root, os.R_OK | os.X_OK):
            raise DataUnavailable(f"{NAME}: suite.root {root} is not readable")
        return str(root.resolve())

    def read(self) -> tuple[Listing, np.ndarray, np.ndarray]:
        """The listing, the decoded images (R, C, S, S) of its readable files and their (R,)
        positions in the listing (through the cache where it holds them); one warning line
        when some files cannot be read, a SuiteError when none can."""
        c = self.cfg
        root = Path(self.locate())
        try:
            listing = scan(root)
        except OSError as e:  # a split or class folder that cannot be listed
            raise SuiteError(f"{NAME}: cannot list {root}: {' '.join(str(e).split())}") from None
        files = listing.files
        digest = files_digest(root, files)
        self.data_identity = f"{root.name}@{digest[:12]}"
        cached = None
        if c.cache:
            where = cache_file(root, digest, c.size, c.channels)
            cached = _read_cache(where)
        if cached is None:
            cached = decode_all(files, c.size, c.channels)
            if c.cache:
                _write_cache(where, *cached)
        x, readable, bad = cached
        if bad:
            examples = "; ".join(f"{p} ({why})" for p, why in bad[:2])
            if len(readable) == 0:
                raise SuiteError(f"{NAME}: none of the {len(files):,} image files under {root} "
                                 f"could be read, e.g. {examples}")
            log.warning("%s: warning: skipped %s of %s image files under %s that could not be "
                        "read, e.g. %s", NAME, f"{len(bad):,}", f"{len(files):,}", root, examples)
        return listing, x, readable

    def _load(self) -> SuiteData:
        c = self.cfg
        listing, x, readable = self.read()
        y, part = listing.label[readable], listing.part[readable]  # (R,) of the readable files
        n_classes, names = len(listing.classes), listing.classes
        counted = np.flatnonzero(part == 0)  # the images min_per_class counts: all, or train/'s
        have = np.bincount(y[counted], minlength=n_classes)
        if listing.layout:  # a class seen in val/ or test/ must be learnt from train/
            absent = np.flatnonzero((have == 0) & (np.bincount(y, minlength=n_classes) > 0))
            if len(absent):
                raise SuiteError(f"{NAME}: class {names[absent[0]]!r} has images outside train/ "
                                 f"but none in train/ under {listing.root}")
        few = np.flatnonzero(have < c.min_per_class)
        if len(few):
            more = f" (and {len(few) - 1} more classes)" if len(few) > 1 else ""
            where = "readable images in train/" if listing.layout else "readable images"
            raise SuiteError(f"{NAME}: class {names[few[0]]!r} has {have[few[0]]} {where}, fewer "
                             f"than suite.min_per_class={c.min_per_class}{more}, under "
                             f"{listing.root}; add images, remove its folder, or lower "
                             "suite.min_per_class")
        idx = {s: readable[part == i] for i, s in enumerate(SPLITS)}  # positions in the listing
        for s in listing.parts:
            if len(idx[s]) == 0:
                raise SuiteError(f"{NAME}: {listing.root}/{s}/ holds no readable images; "
                                 f"remove it to hold {s} images out of train/")
        label = listing.label
        pool, what = idx["train"], "train/'s" if listing.layout else "the"
        if "test" not in listing.parts:  # held out of the pool, as digits does
            pool, idx["test"] = self._holdout(pool, label, c.test_fraction, "test", what)
        if "val" not in listing.parts:
            frac = c.val_fraction / (1 - c.test_fraction) if "test" not in listing.parts \
                else c.val_fraction  # so that val is val_fraction of the pool before test
            pool, idx["val"] = self._holdout(pool, label, frac, "val", what)
        idx["train"] = pool
        # rows of x for each split: x holds the readable files in listing order
        row = np.full(len(listing.files), -1, dtype=np.int64)
        row[readable] = np.arange(len(readable))
        xt, lab = torch.from_numpy(x), torch.from_numpy(label)

        def split(positions: np.ndarray) -> Split:
            p = torch.from_numpy(np.sort(positions))
            return Split(xt[torch.from_numpy(row)[p]], lab[p], p)

        return SuiteData(train=split(idx["train"]), val=split(idx["val"]),
                         test=split(idx["test"]), n_classes=n_classes, class_names=names)

    def _holdout(self, pool: np.ndarray, label: np.ndarray, fraction: float, name: str,
                 what: str) -> tuple[np.ndarray, np.ndarray]:
        """``pool`` split into (kept, held out) stratified by class; one line when a side
        cannot hold one image of each class (sklearn's own check, said in our words)."""
        n, k = len(pool), len(np.unique(label[pool]))
        held = math.ceil(fraction * n)  # as sklearn rounds a fractional test_size
        if held < k or n - held < k:
            short = "cannot hold" if held < k else f"leaves {n - held} images, too few for"
            raise SuiteError(f"{NAME}: a {name} split of {held} of {what} {n} images "
                             f"(suite.{name}_fraction={getattr(self.cfg, f'{name}_fraction')})"
                             f" {short} one image of each of the {k} classes; change "
                             f"suite.{name}_fraction or add images")
        try:
            return stratified_holdout(pool, label, fraction, self.cfg.split_seed)
        except ValueError as e:  # a class too small to stratify (min_per_class < 3)
            raise SuiteError(f"{NAME}: cannot hold a stratified {name} split out of {what} "
                             f"{n} images ({' '.join(str(e).split())}); raise "
                             "suite.min_per_class or add images") from None

    # -- views and encoder
    def in_channels(self) -> int:
        """1 or 3: from ``channels``, or with ``auto`` from the data (read if a folder is
        given; 3 when none is, e.g. for ``negbench suites``)."""
        c = self.cfg.channels
        if c != "auto":
            return 1 if c == "grey" else 3
        if self._data is None and self.data_status() == "present":
            self.load()
        return 3 if self._data is None else int(self._data.train.x.shape[1])

    def prepare(self, x: Tensor) -> Tensor:
        return x.float() / 255.0

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        v = self.prepare(x)
        if v.shape[1] == 1:
            return augment(v, self.cfg.grey_augment, generator)
        return simclr_augment(v, self.cfg.augment, generator)

    def build_encoder(self) -> nn.Module:
        c = self.cfg
        w = c.width or DEFAULT_WIDTH[c.encoder]
        if c.encoder == "resnet18":
            return ResNet18(c.stem, w, 512, c.proj_dim, in_channels=self.in_channels())
        return SmallCNN(self.in_channels(), w, c.proj_dim, c.stem_stride)
