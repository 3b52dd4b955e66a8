"""The online vision suites (cifar10, cifar100, stl10), their SimCLR augmentation and their
ResNet-18, with no network and no real data.

The shape contracts run on a TINY FIXTURE MADE HERE: a few random images written in
torchvision's on-disk formats (CIFAR's pickled batches, STL-10's raw binaries) into a temporary
directory. It checks the readers, the split and the interfaces; it is not the dataset, and
nothing here says anything about accuracy on it.
"""

from __future__ import annotations

import dataclasses
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import negbench.suites.online_vision as ov
from negbench import suites
from negbench.harness.cli import main
from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.runner import run
from negbench.suites import DataUnavailable, SuiteError
from negbench.suites.online_vision import CIFAR10Config, CIFAR100Config, STL10Config
from negbench.suites.resnet import ResNet18
from negbench.suites.simclr_augment import (
    SimCLRAugmentConfig,
    _hue_matrices,
    color_jitter,
    gaussian_blur,
    gray,
    simclr_augment,
)

NAMES = ("cifar10", "cifar100", "stl10")


# --------------------------------------------------------------------------- fixture writers
def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(rng, n, side):
    return rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)


def write_cifar10(root, per_class=4, n_test=20, seed=0):
    """cifar-10-batches-py/ with 10 * per_class training images over five batches."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    y = np.repeat(np.arange(10), per_class)
    rng.shuffle(y)
    x = _images(rng, len(y), 32)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        _pickle(d / f"data_batch_{i}", {"data": x[part].reshape(len(part), -1),
                                        "labels": y[part].tolist(), "batch_label": f"b{i}"})
    xt, yt = _images(rng, n_test, 32), rng.integers(0, 10, n_test)
    _pickle(d / "test_batch", {"data": xt.reshape(n_test, -1), "labels": yt.tolist()})
    _pickle(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return x, y, xt, yt


def write_cifar100(root, per_class=3, n_test=30, seed=1):
    """cifar-100-python/ with 100 * per_class training images; coarse label = fine % 20."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    y = np.repeat(np.arange(100), per_class)
    rng.shuffle(y)
    x = _images(rng, len(y), 32)
    xt, yt = _images(rng, n_test, 32), rng.integers(0, 100, n_test)
    for name, xs, ys in (("train", x, y), ("test", xt, yt)):
        _pickle(d / name, {"data": xs.reshape(len(ys), -1), "fine_labels": ys.tolist(),
                           "coarse_labels": (ys % 20).tolist()})
    _pickle(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                         "coarse_label_names": [f"k{i}" for i in range(20)]})
    return x, y, xt, yt


def _stl_bytes(x):
    return x.transpose(0, 1, 3, 2).tobytes()  # STL-10 stores each channel column-major


def write_stl10(root, per_class=3, n_test=12, n_unlabeled=4, seed=2):
    """stl10_binary/ with 10 * per_class labelled training images (labels stored 1..10)."""
    rng = np.random.default_rng(seed)
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    y = np.repeat(np.arange(10), per_class)
    rng.shuffle(y)
    x = _images(rng, len(y), 96)
    xt, yt = _images(rng, n_test, 96), rng.integers(0, 10, n_test)
    (d / "train_X.bin").write_bytes(_stl_bytes(x))
    (d / "train_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    (d / "test_X.bin").write_bytes(_stl_bytes(xt))
    (d / "test_y.bin").write_bytes((yt + 1).astype(np.uint8).tobytes())
    (d / "unlabeled_X.bin").write_bytes(_stl_bytes(_images(rng, n_unlabeled, 96)))
    (d / "class_names.txt").write_text("\n".join(f"s{i}" for i in range(10)) + "\n")
    return x, y, xt, yt


# name -> (writer, config for the fixture, image side, n_classes)
FIXTURES = {
    "cifar10": (write_cifar10, CIFAR10Config(val_size=10), 32, 10),
    "cifar100": (write_cifar100, CIFAR100Config(val_size=100), 32, 100),
    "stl10": (write_stl10, STL10Config(val_size=10), 96, 10),
}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty cache and no network: ``reachable`` says no (and no socket is ever opened)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NEGBENCH_CACHE", str(cache))
    monkeypatch.setattr(ov, "reachable", lambda url, timeout=3.0: False)
    return cache


def _rows(x):
    return {bytes(r) for r in x.reshape(x.shape[0], -1).numpy()}


# --------------------------------------------------------------------------- (1) offline
def test_the_three_are_registered_for_gpu_users():
    assert set(NAMES) <= set(suites.names())
    for n in NAMES:
        cls = suites.get(n)
        assert cls.source == "torchvision download (network) or --data-dir"
        assert cls.default_batch_size == 512 and cls.default_budget[0] == "samples"


@pytest.mark.parametrize("name", NAMES)
def test_offline_and_absent_is_one_line(name, offline, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    s = suites.create(name, data_dir=str(empty))
    src = s.data_source
    status = s.data_status()
    assert status != "present" and "\n" not in status
    for needle in (name, str(empty), str(offline), src.url, src.folder):
        assert needle in status, needle
    with pytest.raises(DataUnavailable) as e:
        s.locate()
    msg = str(e.value)
    assert "\n" not in msg and "offline" in msg and src.url in msg and str(empty) in msg
    with pytest.raises(DataUnavailable, match="offline"):
        s.load()


@pytest.mark.parametrize("name", NAMES)
def test_status_never_touches_the_network(name, tmp_path, monkeypatch):
    """`negbench suites` and the registry conformance test call data_status: it must not probe
    the network (nor download), and with download off locate() must not either."""
    monkeypatch.setenv("NEGBENCH_CACHE", str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("network probed")

    monkeypatch.setattr(ov, "reachable", boom)
    s = suites.create(name)
    assert s.data_status() != "present"
    cfg = dataclasses.replace(s.cfg, download=False)
    with pytest.raises(DataUnavailable, match="download is off"):
        suites.create(name, cfg).locate()


def test_the_cli_says_one_line_offline(offline, tmp_path, capsys):
    code = main(["run", "--suite", "cifar10", "--strategy", "in-batch", "--no-progress",
                 "--data-dir", str(tmp_path / "nowhere"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "cifar-10-python.tar.gz" in lines[0] and "Traceback" not in err


# --------------------------------------------------------------------------- (2) shapes
@pytest.mark.parametrize("name", NAMES)
def test_fixture_loads_with_the_contracts(name, offline, tmp_path):
    writer, cfg, side, n_classes = FIXTURES[name]
    x, y, xt, yt = writer(tmp_path)
    s = suites.create(name, cfg, data_dir=str(tmp_path))
    assert s.data_status() == "present"
    assert s.locate() == str(tmp_path / s.data_source.folder)
    d = s.load()
    assert d.n_classes == n_classes == len(d.class_names)
    assert len(d.val) == cfg.val_size and len(d.train) + len(d.val) == len(y)
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (3, side, side)
        assert split.y.dtype == torch.int64 and split.x.shape[0] == split.y.shape[0]
        assert 0 <= int(split.y.min()) and int(split.y.max()) < n_classes
    # the test split is the official one, images read in the right orientation and order
    assert torch.equal(d.test.x, torch.from_numpy(xt))
    assert torch.equal(d.test.y, torch.from_numpy(yt))
    # train and val: disjoint, together the official training split, each with its label
    tr, va = _rows(d.train.x), _rows(d.val.x)
    assert not tr & va and tr | va == _rows(torch.from_numpy(x))
    lookup = {bytes(r): int(c) for r, c in zip(x.reshape(len(y), -1), y, strict=True)}
    for split in (d.train, d.val):
        got = [lookup[bytes(r)] for r in split.x.reshape(len(split), -1).numpy()]
        assert got == split.y.tolist()
    # source ids: positions in the official files (training then test), none in two splits
    for split, rows in ((d.train, x.reshape(len(y), -1)), (d.val, x.reshape(len(y), -1))):
        assert torch.equal(split.x.reshape(len(split), -1), torch.from_numpy(rows[split.source]))
    assert torch.equal(d.test.source, len(y) + torch.arange(len(yt)))
    ids = torch.cat([d.train.source, d.val.source, d.test.source])
    assert ids.unique().numel() == ids.numel() == len(y) + len(yt)
    # stratified: every class on both sides
    assert set(d.train.y.tolist()) == set(d.val.y.tolist()) == set(range(n_classes))


@pytest.mark.parametrize("name", NAMES)
def test_views_and_encoder(name, offline, tmp_path):
    writer, cfg, side, _ = FIXTURES[name]
    writer(tmp_path)
    s = suites.create(name, cfg, data_dir=str(tmp_path))
    b = 4 if side == 32 else 2
    x = s.load().train.x[:b]
    g = torch.Generator().manual_seed(0)
    v1, v2 = s.views(x, g)
    p = s.prepare(x)
    assert p.dtype == torch.float32 and 0 <= float(p.min()) and float(p.max()) <= 1
    for v in (v1, v2):
        assert v.shape == p.shape == (b, 3, side, side) and v.dtype == torch.float32
        assert v.device == x.device and torch.isfinite(v).all()
        assert 0 <= float(v.min()) and float(v.max()) <= 1
        assert not torch.equal(v, p)
    assert not torch.equal(v1, v2)
    enc = s.build_encoder()
    assert isinstance(enc, ResNet18) and enc.feature_dim == 512 and enc.out_dim == 128
    e = b // 2  # the full ResNet-18 is slow on a CPU: encode half the batch
    with torch.no_grad():
        z, f = enc(v1[:e]), enc.features(v1[:e])
    assert z.shape == (e, 128) and f.shape == (e, 512)
    assert torch.allclose(z.norm(dim=1), torch.ones(e), atol=1e-5)


def _stage1_side(enc, side):
    seen = []
    h = enc.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        enc.features(torch.rand(2, 3, side, side))
    h.remove()
    return seen[0]


def test_resnet18_has_the_cifar_stem():
    enc = suites.create("cifar10").build_encoder()
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert enc.conv1.padding == (1, 1) and enc.conv1.in_channels == 3
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in enc.modules())
    assert _stage1_side(enc, 32) == 32  # the stem keeps the resolution
    # ResNet-18: 4 stages of 2 basic blocks, 11.2M backbone parameters
    blocks = [m for m in enc.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8
    backbone = sum(p.numel() for n, p in enc.named_parameters() if not n.startswith("head."))
    assert backbone == 11_168_832


def test_resnet18_imagenet_stem_is_the_option():
    enc = ResNet18(stem="imagenet", width=8)
    assert enc.conv1.kernel_size == (7, 7) and enc.conv1.stride == (2, 2)
    assert _stage1_side(enc, 32) == 8
    with pytest.raises(SuiteError, match="stem must be one of"):
        ResNet18(stem="vit")


def test_cifar100_coarse_labels(offline, tmp_path):
    x, y, _, yt = write_cifar100(tmp_path)
    s = suites.create("cifar100", CIFAR100Config(val_size=20, labels="coarse"),
                      data_dir=str(tmp_path))
    d = s.load()
    assert d.n_classes == 20 and d.class_names[3] == "k3"
    assert torch.equal(d.test.y, torch.from_numpy(yt % 20))
    with pytest.raises(SuiteError, match="fine or coarse"):
        CIFAR100Config(labels="medium")


def test_stl10_unlabeled_is_readable_but_not_in_a_run(offline, tmp_path):
    write_stl10(tmp_path, n_unlabeled=4)
    s = suites.create("stl10", STL10Config(val_size=10), data_dir=str(tmp_path))
    u = s.load_unlabeled()
    assert u.shape == (4, 3, 96, 96) and u.dtype == torch.uint8
    assert len(s.load().train) + len(s.load().val) == 30  # labelled images only


def test_archive_in_data_dir_is_extracted_into_the_cache(offline, tmp_path):
    src = tmp_path / "src"
    x, y, xt, _ = write_cifar10(src)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    s = suites.create("cifar10", CIFAR10Config(val_size=10), data_dir=str(data))
    assert s.data_status() == "present" and s.locate().endswith("cifar-10-python.tar.gz")
    d = s.load()
    assert (offline / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert torch.equal(d.test.x, torch.from_numpy(xt))
    # and the cache is found by the next suite with no --data-dir
    assert suites.create("cifar10").locate() == str(offline / "cifar-10-batches-py")


def test_bad_val_size_is_a_clear_error(offline, tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(SuiteError, match="val_size 40 must lie in"):
        suites.create("cifar10", CIFAR10Config(val_size=40), data_dir=str(tmp_path)).load()
    with pytest.raises(SuiteError, match="val_size must be >= 1"):
        CIFAR10Config(val_size=0)


def test_a_damaged_cifar_batch_is_a_clear_error(offline, tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(SuiteError, match="cifar10: cannot read .*UnpicklingError"):
        suites.create("cifar10", CIFAR10Config(val_size=10), data_dir=str(tmp_path)).load()


def test_truncated_stl_file_is_a_clear_error(offline, tmp_path):
    write_stl10(tmp_path)
    f = tmp_path / "stl10_binary" / "test_X.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(SuiteError, match="not a whole number"):
        suites.create("stl10", STL10Config(val_size=10), data_dir=str(tmp_path)).load()


def test_a_run_on_the_fixture_goes_through_the_harness(offline, tmp_path):
    """Train, FNR from the suite's labels, kNN and linear evaluation: the harness takes the
    suite as it is (a narrow ResNet-18, width 8, to stay fast on a CPU)."""
    write_cifar10(tmp_path, per_class=8)
    cfg = build_config("cifar10", "in-batch", budget=BudgetConfig("samples", 64),
                       sets={"batch_size": "16", "suite.val_size": "10", "suite.width": "8",
                             "suite.augment.min_scale": "0.08", "log_every": "2",
                             "eval.linear_epochs": "20"})
    assert cfg.suite_cfg.augment.min_scale == 0.08
    r = run(cfg, track=False, data_dir=str(tmp_path))
    m = r.metrics
    assert m["steps"] == 4 and m["samples_seen"] == 64 and m["flops"] > 0
    for key in ("knn_acc", "linear_acc", "fnr", "fnr_weighted"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert all(np.isfinite(h["loss"]) for h in r.history)


# --------------------------------------------------------------------------- (3) augmentation
def _batch(n=6, side=32, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_views_come_from_the_given_generator_only(blur):
    cfg = SimCLRAugmentConfig(blur_p=blur)
    x = _batch()
    torch.manual_seed(1)
    a = simclr_augment(x, cfg, torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # a different global RNG state changes nothing
    b = simclr_augment(x, cfg, torch.Generator().manual_seed(7))
    c = simclr_augment(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(7)
    first, second = simclr_augment(x, cfg, g), simclr_augment(x, cfg, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_augmentation_is_batched(monkeypatch):
    """One grid_sample for the crops of the whole batch and two grouped convolutions for the
    blur, whatever the batch size: no per-image work."""
    calls = {"grid_sample": 0, "conv2d": 0}
    for fn in calls:
        orig = getattr(F, fn)

        def counted(*a, _orig=orig, _fn=fn, **k):
            calls[_fn] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(F, fn, counted)
    cfg = SimCLRAugmentConfig(blur_p=0.5)
    for n in (2, 33):
        for k in calls:
            calls[k] = 0
        simclr_augment(_batch(n), cfg, torch.Generator().manual_seed(0))
        assert calls == {"grid_sample": 1, "conv2d": 2}, (n, calls)


def test_identity_settings_give_the_image_back_and_flip_flips():
    x = _batch()
    ident = SimCLRAugmentConfig(min_scale=1.0, max_scale=1.0, min_ratio=1.0, max_ratio=1.0,
                                hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(simclr_augment(x, ident, g), x, atol=1e-5, rtol=0)
    flip = dataclasses.replace(ident, hflip_p=1.0)
    torch.testing.assert_close(simclr_augment(x, flip, g), x.flip(-1), atol=1e-5, rtol=0)


def test_crop_takes_the_asked_area_inside_the_image():
    side = 32
    ramp = ((torch.arange(side) + 0.5) / side).expand(8, 3, side, side).contiguous()  # x coord
    cfg = SimCLRAugmentConfig(min_scale=0.25, max_scale=0.25, min_ratio=1.0, max_ratio=1.0,
                              hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    v = simclr_augment(ramp, cfg, torch.Generator().manual_seed(3))
    span = v.amax(dim=(1, 2, 3)) - v.amin(dim=(1, 2, 3))  # (8,) width covered by the crop
    torch.testing.assert_close(span, torch.full((8,), 0.5 * (1 - 1 / side)), atol=1e-4, rtol=0)
    assert float(v.min()) >= float(ramp.min()) - 1e-6 and float(v.max()) <= float(ramp.max()) + 1e-6
    assert len(set(v.amin(dim=(1, 2, 3)).tolist())) > 1  # the position varies


def test_grayscale_and_jitter():
    x = _batch()
    g = torch.Generator().manual_seed(0)
    always = SimCLRAugmentConfig(grayscale_p=1.0)
    v = simclr_augment(x, always, g)
    assert torch.equal(v[:, 0], v[:, 1]) and torch.equal(v[:, 1], v[:, 2])
    never = SimCLRAugmentConfig(grayscale_p=0.0, jitter_p=0.0)
    v = simclr_augment(x, never, g)
    assert not torch.equal(v[:, 0], v[:, 1])
    # jitter strength 0 changes nothing; strength 1 changes every image
    x = 0.2 + 0.6 * _batch(seed=1)
    torch.testing.assert_close(color_jitter(x, SimCLRAugmentConfig(jitter_p=1.0, strength=0.0), g),
                               x, atol=1e-5, rtol=0)
    j = color_jitter(x, SimCLRAugmentConfig(jitter_p=1.0, strength=1.0), g)
    assert ((j - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all()
    assert torch.equal(color_jitter(x, SimCLRAugmentConfig(jitter_p=0.0), g), x)


def test_hue_rotation_keeps_luma_and_turns_the_chroma():
    m = _hue_matrices(torch.tensor([0.0, 0.1, -0.2, 0.5]))  # (4, 3, 3)
    luma = torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(luma @ m, luma.expand(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(m[0], torch.eye(3), atol=1e-5, rtol=0)
    red = torch.tensor([0.6, 0.4, 0.4])
    assert not torch.allclose(m[3] @ red, red, atol=1e-2)  # half a turn: another colour
    torch.testing.assert_close(m[3] @ m[3] @ red, red, atol=1e-5, rtol=0)  # a full turn


def test_blur_keeps_a_flat_image_and_smooths_noise():
    cfg = SimCLRAugmentConfig(blur_p=1.0, blur_sigma_min=1.5, blur_sigma_max=2.0)
    g = torch.Generator().manual_seed(0)
    flat = torch.full((3, 3, 32, 32), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, cfg, g), flat, atol=1e-6, rtol=0)
    noise = _batch(3)
    b = gaussian_blur(noise, cfg, g)
    assert (b.std(dim=(2, 3)) < 0.5 * noise.std(dim=(2, 3))).all()
    off = dataclasses.replace(cfg, blur_p=0.0)
    torch.testing.assert_close(gaussian_blur(noise, off, g), noise, atol=1e-6, rtol=0)
    assert gray(noise).shape == (3, 1, 32, 32)


def test_bad_inputs_and_configs_are_clear_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(SuiteError, match="float images"):
        simclr_augment((_batch() * 255).to(torch.uint8), SimCLRAugmentConfig(), g)
    with pytest.raises(SuiteError, match=r"RGB images \(N, 3, H, W\)"):
        simclr_augment(torch.rand(2, 1, 8, 8), SimCLRAugmentConfig(), g)
    with pytest.raises(SuiteError, match="min_scale"):
        SimCLRAugmentConfig(min_scale=0.0)
    with pytest.raises(SuiteError, match="grayscale_p"):
        SimCLRAugmentConfig(grayscale_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_stay_on_the_device():
    x = (_batch() * 255).to(torch.uint8).cuda()
    s = suites.create("cifar10")
    g = torch.Generator(device="cuda").manual_seed(0)
    v1, v2 = s.views(x, g)
    assert v1.device == x.device and not torch.equal(v1, v2)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    assert torch.equal(s.view(x, g2), v1)
    enc = s.build_encoder().cuda()
    assert enc(v1).shape == (6, 128)
