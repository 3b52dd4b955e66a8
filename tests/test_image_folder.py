"""image-folder: a user's folder of images in torchvision's ImageFolder layout.

Every folder here is written by the test from REAL images: scikit-learn's ``load_digits``
(1,797 handwritten 8x8 digits), saved as 16x16 PNG/BMP files, one folder per digit named by
the digit's English word (so the sorted class order is not the digits' order). Garbage files
are written only where the test is about unreadable files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from negbench import suites
from negbench.harness.cli import main
from negbench.suites import DataUnavailable, SuiteError
from negbench.suites.image_folder import ImageFolderConfig
from negbench.suites.resnet import ResNet18
from negbench.suites.vision import SmallCNN

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SORTED = tuple(sorted(WORDS))  # the class names: sorted folder names, as torchvision
EXTS = (".png", ".PNG", ".bmp", ".BMP")  # lossless, so pixels round-trip exactly
CLS = suites.get("image-folder")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """The decoded-image cache of every test goes under its own tmp_path."""
    monkeypatch.setenv("NEGBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def digits():
    """(images (1797, 16, 16) uint8, targets (1797,)): the digits, 0..16 scaled to 0..255 and
    upscaled 2x (nearest)."""
    d = load_digits()
    small = np.rint(d.images * 255 / 16).astype(np.uint8)  # (N, 8, 8)
    return small.repeat(2, axis=1).repeat(2, axis=2), d.target.astype(np.int64)


def write(root: Path, images: np.ndarray, targets: np.ndarray, which=None, mode="L",
          split: str | None = None) -> list[int]:
    """Write the digits ``which`` (default all) as ROOT[/split]/WORD/NNNN.ext; their indices."""
    which = range(len(targets)) if which is None else which
    base = root / split if split else root
    for i in which:
        d = base / WORDS[targets[i]]
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(images[i], "L")
        im.convert(mode).save(d / f"{i:04d}{EXTS[i % len(EXTS)]}")
    return list(which)


def order(indices, targets, split_of=None) -> np.ndarray:
    """The digit indices in the suite's source order: split folder, class name, file name."""
    rank = {s: k for k, s in enumerate(("train", "val", "test"))}
    return np.array(sorted(indices, key=lambda i: (rank[split_of(i)] if split_of else 0,
                                                   WORDS[targets[i]], f"{i:04d}")))


def label_of(targets: np.ndarray) -> np.ndarray:
    """Each digit's class index: its word's position among the sorted folder names."""
    return np.array([SORTED.index(w) for w in WORDS])[targets]


def suite(root, **kw):
    return CLS(ImageFolderConfig(root=str(root), **kw))


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory, digits):
    """Every digit as a grey file, beside files that are not images of a class."""
    root = tmp_path_factory.mktemp("digits-grey")
    write(root, *digits)
    (root / "README.txt").write_text("not a class")
    (root / "zero" / "notes.txt").write_text("not an image")
    (root / ".thumbnails").mkdir()  # hidden: not a class
    Image.fromarray(digits[0][0]).save(root / ".thumbnails" / "x.png")
    (root / "one" / "._0001.png").write_bytes(b"\0\5 macOS resource fork")  # hidden: skipped
    return root


# --------------------------------------------------------------------------- loading
def test_flat_folder_loads_every_image_with_its_folder_label(grey_folder, digits):
    images, targets = digits
    s = suite(grey_folder, size=16)
    assert s.data_status() == "present"
    d = s.load()
    assert d.class_names == SORTED and d.n_classes == 10
    # 20% test, then 10% of all for val (12.5% of the rest), as digits: 1257/180/360
    assert (len(d.train), len(d.val), len(d.test)) == (1257, 180, 360)
    assert set(d.train.y.tolist()) == set(range(10))
    src_order = order(range(len(targets)), targets)  # source index -> digit index
    want_y = label_of(targets)
    seen = []
    for sp in (d.train, d.val, d.test):
        assert sp.x.dtype == torch.uint8 and sp.x.shape[1:] == (1, 16, 16)  # auto: grey
        digit = src_order[sp.source.numpy()]
        np.testing.assert_array_equal(sp.y.numpy(), want_y[digit])
        np.testing.assert_array_equal(sp.x[:, 0].numpy(), images[digit])
        seen.append(sp.source)
    joined = torch.cat(seen)
    assert joined.unique().numel() == 1797 and int(joined.max()) == 1796


def test_split_is_stratified_and_fixed_by_split_seed(grey_folder, digits):
    _, targets = digits
    a, b = suite(grey_folder, size=16).load(), suite(grey_folder, size=16).load()
    c = suite(grey_folder, size=16, split_seed=1).load()
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).source, b.split(name).source)
    assert not torch.equal(a.test.source, c.test.source)
    assert not torch.equal(a.val.source, c.val.source)
    per_class = np.bincount(label_of(targets), minlength=10)
    for name, share in (("test", 0.2), ("val", 0.1)):
        got = np.bincount(a.split(name).y.numpy(), minlength=10)
        assert np.abs(got - share * per_class).max() <= 1.5, (name, got)


def test_split_folders_are_honoured(tmp_path, digits):
    images, targets = digits
    rule = {**{r: "train" for r in range(7)}, 7: "val", 8: "test", 9: "test"}

    def split_of(i):
        return rule[i % 10]

    root = tmp_path / "data"
    kept = [i for i in range(600) if not (split_of(i) == "val" and targets[i] == 9)]
    for name in ("train", "val", "test"):  # val/ has no nine: the classes are the union
        write(root, images, targets, [i for i in kept if split_of(i) == name], split=name)
    d = suite(root, size=16).load()
    assert d.class_names == SORTED
    src_order = order(kept, targets, split_of)
    want_y = label_of(targets)
    for name in ("train", "val", "test"):
        sp = d.split(name)
        digit = src_order[sp.source.numpy()]
        assert {split_of(i) for i in digit} == {name}
        assert len(sp) == sum(split_of(i) == name for i in kept)
        np.testing.assert_array_equal(sp.y.numpy(), want_y[digit])
        np.testing.assert_array_equal(sp.x[:, 0].numpy(), images[digit])
    assert SORTED.index("nine") not in d.val.y.tolist()


def test_a_missing_val_folder_is_held_out_of_train(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, range(0, 500), split="train")
    write(root, images, targets, range(500, 700), split="test")
    d = suite(root, size=16, val_fraction=0.2).load()
    assert len(d.test) == 200 and set(d.test.source.tolist()) == set(range(500, 700))
    assert len(d.val) == math.ceil(0.2 * 500) and len(d.train) == 500 - len(d.val)
    assert int(torch.cat([d.train.source, d.val.source]).max()) < 500


def test_a_class_missing_from_train_is_an_error(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, [i for i in range(300) if targets[i] != 4], split="train")
    write(root, images, targets, range(300, 400), split="test")
    with pytest.raises(SuiteError, match="class 'four' has images outside train/ but none in "
                                         "train/"):
        suite(root).load()


def test_size_resizes_once_on_load(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    which = write(root, images, targets, range(300))
    small = suite(root, size=8).load()
    assert small.train.x.shape[1:] == (1, 8, 8)
    digit = order(which, targets)[small.train.source.numpy()]
    orig = images[digit][:, ::2, ::2].astype(float)  # the 8x8 originals (0..255)
    got = small.train.x[:, 0].numpy().astype(float)
    err = np.abs(got - orig).mean()
    assert err < 0.4 * np.abs(got - orig[::-1]).mean(), err  # each image is its own digit
    # resized once, from the file, by PIL's antialiased bilinear filter (the documented one)
    want = np.stack([np.asarray(Image.fromarray(images[i]).resize((8, 8), Image.BILINEAR))
                     for i in digit])
    np.testing.assert_array_equal(got, want)
    assert suite(root, size=24).load().test.x.shape[1:] == (1, 24, 24)


def test_a_wide_image_is_centre_cropped(tmp_path):
    """Shorter side to ``size``, then the centre square: a 40x20 image whose centre 20x20 is
    green (red and blue at the sides) becomes all green."""
    root = tmp_path / "data"
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10, 0], a[:, 10:30, 1], a[:, 30:, 2] = 255, 255, 255
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(a).save(root / cls / f"{i}.jpg" if i % 2 else root / cls / f"{i}.PNG")
    d = suite(root, size=10, min_per_class=10).load()
    x = torch.cat([d.train.x, d.val.x, d.test.x])
    assert x.shape == (20, 3, 10, 10)
    png = x[torch.cat([d.train.source, d.val.source, d.test.source]) % 2 == 0]  # lossless
    inner = png[..., 1:-1]  # the filter reaches one source pixel past the crop at the edges
    assert (inner[:, 1] == 255).all() and (inner[:, 0] == 0).all() and (inner[:, 2] == 0).all()
    assert (png[:, 1, :, [0, -1]] >= 200).all()  # the edges: mostly green still
    assert (x[:, 1].float().mean() > 240) and (x[:, 0].float().mean() < 15)  # the JPEGs too


def test_channels_auto_rgb_and_grey(tmp_path, digits):
    images, targets = digits
    grey, rgb, mixed = tmp_path / "grey", tmp_path / "rgb", tmp_path / "mixed"
    write(grey, images, targets, range(200))
    write(rgb, images, targets, range(200), mode="RGB")
    write(mixed, images, targets, range(0, 200, 2))
    write(mixed, images, targets, range(1, 200, 2), mode="RGB")
    g = suite(grey, size=16).load().train
    assert g.x.shape[1] == 1
    r = suite(rgb, size=16).load().train
    assert r.x.shape[1] == 3 and torch.equal(r.source, g.source)
    assert torch.equal(r.x, g.x.expand(-1, 3, -1, -1))  # grey pixels on all three channels
    assert torch.equal(suite(rgb, size=16, channels="grey").load().train.x, g.x)
    assert torch.equal(suite(grey, size=16, channels="rgb").load().train.x, r.x)
    m = suite(mixed, size=16).load().train
    assert m.x.shape[1] == 3 and torch.equal(m.x, r.x)  # one colour file: all as RGB


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    which = write(root, images, targets, range(200))
    for i in which[::3]:  # a third of the files rewritten as 16-bit PNGs of the same digit
        p = root / WORDS[targets[i]] / f"{i:04d}{EXTS[i % len(EXTS)]}"
        p.unlink()
        Image.fromarray(images[i].astype(np.uint16) * 257).save(p.with_suffix(".png"))
    d = suite(root, size=16).load()
    digit = order(which, targets)[d.train.source.numpy()]
    np.testing.assert_array_equal(d.train.x[:, 0].numpy(), images[digit])


# --------------------------------------------------------------------------- training
def test_cli_run_learns_the_digits(grey_folder, tmp_path, capsys):
    code = main(["run", "--suite", "image-folder", "--strategy", "in-batch",
                 "--set", f"suite.root={grey_folder}", "--set", "suite.size=16",
                 "--set", "batch_size=64", "--set", "eval.linear_epochs=30",
                 "--budget", "samples=1024", "--json", "--no-progress",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    m = json.loads(out)
    assert m["samples_seen"] == 1024
    # measured 0.88 kNN and 0.94 linear here (chance: 0.1); labels not matching the images
    # would give about chance
    assert m["knn_acc"] > 0.5 and m["linear_acc"] > 0.7, m


@pytest.mark.parametrize("encoder", ["small-cnn", "resnet18"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_both_encoders_give_the_suite_interface(tmp_path, digits, encoder, mode):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, range(200), mode=mode)
    s = suite(root, size=16, encoder=encoder)
    c = 1 if mode == "L" else 3
    d = s.load()
    g = torch.Generator().manual_seed(0)
    x = d.train.x[:6]
    v1, v2 = s.views(x, g)
    assert v1.shape == v2.shape == s.prepare(x).shape == (6, c, 16, 16)
    assert not torch.equal(v1, v2)
    enc = s.build_encoder()
    assert isinstance(enc, ResNet18 if encoder == "resnet18" else SmallCNN)
    first = enc.conv1 if encoder == "resnet18" else enc.backbone[0]
    assert first.in_channels == c
    # the encoder's usual width when suite.width is unset: 4*32 and 8*64 features
    assert enc.feature_dim == (512 if encoder == "resnet18" else 128) and enc.out_dim == 128
    z = enc(v1)
    assert z.shape == (6, enc.out_dim)
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)
    assert enc.features(v1).shape == (6, enc.feature_dim)
    narrow = suite(root, size=16, encoder=encoder, width=8, proj_dim=16).build_encoder()
    assert narrow.out_dim == 16 and narrow.feature_dim == (64 if encoder == "resnet18" else 32)


def test_without_a_folder_it_says_which_key_to_set():
    s = suites.create("image-folder")
    status = s.data_status()
    assert status != "present" and "\n" not in status and "suite.root=PATH" in status
    assert "SmallCNN" in s.describe_encoder()  # negbench suites lists it without data
    with pytest.raises(DataUnavailable, match="suite.root=PATH"):
        s.load()


# --------------------------------------------------------------------------- the cache
def test_the_cache_is_reused_and_follows_the_files(tmp_path, digits, cache_in_tmp):
    images, targets = digits
    root = tmp_path / "data"
    which = write(root, images, targets, range(200))
    s1 = suite(root, size=16)
    first = s1.load()
    files = list((cache_in_tmp / "image-folder").glob("*.npz"))
    assert len(files) == 1
    s2 = suite(root, size=16)
    again = s2.load()
    assert torch.equal(first.train.x, again.train.x)
    assert s1.data_identity == s2.data_identity and s1.data_identity.startswith("data@")
    # rewrite one file with another digit: the folder changed, so it is decoded afresh
    i = int(order(which, targets)[int(first.train.source[0])])
    other = next(j for j in range(200, 400) if targets[j] != targets[i])
    p = root / WORDS[targets[i]] / f"{i:04d}{EXTS[i % len(EXTS)]}"
    Image.fromarray(images[other]).save(p, format="PNG" if "png" in p.suffix.lower() else "BMP")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    s3 = suite(root, size=16)
    changed = s3.load()
    assert s3.data_identity != s1.data_identity  # the run's tag and floor key change with it
    np.testing.assert_array_equal(changed.train.x[0, 0].numpy(), images[other])
    assert torch.equal(changed.train.x[1:], first.train.x[1:])
    now = list((cache_in_tmp / "image-folder").glob("*.npz"))
    assert len(now) == 1 and now != files  # the stale file replaced
    suite(root, size=12).load()  # another setting: a file of its own
    assert len(list((cache_in_tmp / "image-folder").glob("*.npz"))) == 2
    suite(root, size=10, cache=False).load()
    assert len(list((cache_in_tmp / "image-folder").glob("*.npz"))) == 2


# --------------------------------------------------------------------------- bad input
def _garbage(d: Path, n: int, ext=".png") -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        p = d / f"garbage{k}{ext}"
        p.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        out.append(p)
    return out


def test_unreadable_files_are_counted_and_skipped(tmp_path, digits, caplog):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, range(300))
    bad = _garbage(root / "three", 2) + _garbage(root / "seven", 1, ".JPG")
    truncated = root / "five" / "truncated.png"
    buf = (root / "five").glob("*.png").__next__().read_bytes()
    truncated.write_bytes(buf[: len(buf) // 2])
    with caplog.at_level("WARNING", logger="negbench.suites.image_folder"):
        d = suite(root, size=16).load()
    assert len(d.train) + len(d.val) + len(d.test) == 300
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "skipped 4 of 304 image files" in lines[0]
    assert sum(str(p) in lines[0] for p in bad + [truncated]) == 2  # two examples


def test_the_warning_is_one_line_on_stderr(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, range(200))
    bad = _garbage(root / "nine", 3)
    code = ("from negbench import suites; from negbench.suites.image_folder import "
            f"ImageFolderConfig as C; suites.create('image-folder', C(root={str(root)!r}, "
            "cache=False)).load()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "warning: skipped 3 of 203 image files" in lines[0], p.stderr
    assert str(bad[0]) in lines[0]


BAD = {
    # name -> (what to write, expected message fragment)
    "missing root": ("missing", "does not exist"),
    "empty folder": ("empty", "has no class folders"),
    "loose images": ("loose", "must lie in one folder per class"),
    "no images": ("no-images", "no image files"),
    "too few": ("few", "class 'four' has 3 readable images, fewer than suite.min_per_class=10"),
    "all unreadable": ("unreadable", "none of the 5 image files"),
    "stray folder": ("stray", "holds train/ and also extra/"),
}


def _bad_folder(kind: str, root: Path, images, targets) -> Path:
    if kind == "missing":
        return root / "nowhere"
    root.mkdir()
    if kind == "loose":
        for i in range(5):
            Image.fromarray(images[i]).save(root / f"{i}.png")
    elif kind == "no-images":
        for w in WORDS[:3]:
            (root / w).mkdir()
            (root / w / "notes.txt").write_text("text")
    elif kind == "few":
        write(root, images, targets, [i for i in range(300) if targets[i] != 4])
        write(root, images, targets, [i for i in range(300) if targets[i] == 4][:3])
    elif kind == "unreadable":
        _garbage(root / "a", 3)
        _garbage(root / "b", 2, ".jpeg")
    elif kind == "stray":
        write(root, images, targets, range(100), split="train")
        write(root, images, targets, range(100, 120), split="extra")
    return root


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folders_give_one_line(case, tmp_path, digits):
    kind, fragment = BAD[case]
    root = _bad_folder(kind, tmp_path / "data", *digits)
    with pytest.raises(SuiteError) as e:
        suite(root).load()
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and str(root) in msg, msg


@pytest.mark.parametrize("case", ["missing root", "empty folder", "too few", "all unreadable"])
def test_the_cli_says_one_line_and_exits_2(case, tmp_path, digits, capsys):
    kind, fragment = BAD[case]
    root = _bad_folder(kind, tmp_path / "data", *digits)
    code = main(["run", "--suite", "image-folder", "--strategy", "in-batch", "--no-progress",
                 "--set", f"suite.root={root}",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert fragment in lines[0] and "Traceback" not in err
    assert lines[0].startswith("negbench run: error: image-folder: ")


def test_a_split_too_small_for_every_class_says_so(tmp_path, digits):
    images, targets = digits
    root = tmp_path / "data"
    write(root, images, targets, range(200))  # about 20 of each digit
    with pytest.raises(SuiteError, match=r"a val split of \d of the \d+ images "
                                          r"\(suite.val_fraction=0.02\) cannot hold one image "
                                          "of each of the 10 classes"):
        suite(root, val_fraction=0.02).load()


def test_bad_config_values_are_one_line():
    for kw, fragment in (({"channels": "colour"}, "channels must be one of auto, rgb, grey"),
                         ({"encoder": "vit"}, "encoder must be one of small-cnn, resnet18"),
                         ({"size": 2}, "size must be >= 4"),
                         ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum to less than 1")):
        with pytest.raises(SuiteError, match=fragment):
            ImageFolderConfig(**kw)
