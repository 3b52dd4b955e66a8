"""SimCLR's augmentations for colour images, batched on the batch's device.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
appendix A: random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) with a
random horizontal flip; colour distortion, applied with probability 0.8: jitter of brightness,
contrast, saturation and hue in a random order, strength ``s`` giving (0.8s, 0.8s, 0.8s, 0.2s);
random grayscale with probability 0.2; Gaussian blur (ImageNet only, not CIFAR).

Every random draw comes from the caller's ``torch.Generator``, on the device of the batch: the
same generator state gives the same views. There is no loop over images and no host sync: one
``grid_sample`` makes every crop, the colour operations are element-wise with per-image
parameters, and the blur is one grouped convolution per axis.

NOTE, where this departs from torchvision's per-image pipeline:

- **crop**: torchvision tries 10 (area, ratio) draws and takes the first that fits inside the
  image, else a centre crop. Here the 10 tries are drawn for every image at once and the first
  fitting one is chosen by a mask; the fallback is the whole image. The crop position is
  continuous (sub-pixel), not an integer offset, and the resize is bilinear through
  ``grid_sample`` (crops never exceed the image, so it only ever upsamples: no aliasing).
- **hue**: torchvision converts to HSV and shifts the hue. Here the hue shift is a rotation of
  the chroma plane (I, Q) of the YIQ colour space by ``2*pi*h``: one 3x3 matrix per image. It
  keeps luma exactly and is close to the HSV shift for moderate saturation; the result is
  clamped to [0, 1] like every other step.
- **jitter order**: a random permutation of the four operations is drawn per image; each of the
  four slots evaluates all four operations on the batch and keeps, per image, the one its
  permutation names (16 element-wise passes, no sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from negbench.suites.base import SuiteError

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale uses
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (FCC NTSC); Y is the luma above
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_YIQ_INV = tuple(map(tuple, torch.linalg.inv(torch.tensor(_YIQ, dtype=torch.float64)).tolist()))
_CROP_TRIES = 10


@dataclass(frozen=True)
class SimCLRAugmentConfig:
    """SimCLR's view distribution. ``strength`` is the paper's colour-distortion strength s:
    brightness, contrast and saturation factors lie in [1 - 0.8s, 1 + 0.8s], the hue shift in
    [-0.2s, 0.2s] of the colour circle (0.5 is the paper's CIFAR-10 value)."""

    min_scale: float = 0.08  # smallest crop area, as a fraction of the image
    max_scale: float = 1.0
    min_ratio: float = 3 / 4  # crop aspect ratio (width / height) range, drawn log-uniformly
    max_ratio: float = 4 / 3
    hflip_p: float = 0.5
    jitter_p: float = 0.8  # probability of the whole colour jitter
    strength: float = 0.5
    grayscale_p: float = 0.2
    blur_p: float = 0.0  # SimCLR blurs ImageNet (p=0.5), not CIFAR
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    blur_kernel: float = 0.1  # kernel side as a fraction of the image side (odd, at least 3)

    def __post_init__(self):
        for key in ("hflip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise SuiteError(f"augment.{key} must lie in [0, 1]; got {getattr(self, key)}")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise SuiteError("augment: need 0 < min_scale <= max_scale <= 1; got "
                             f"{self.min_scale}, {self.max_scale}")
        if not 0.0 < self.min_ratio <= self.max_ratio:
            raise SuiteError("augment: need 0 < min_ratio <= max_ratio; got "
                             f"{self.min_ratio}, {self.max_ratio}")
        if not 0.0 <= self.strength <= 1.25:
            raise SuiteError(f"augment.strength must lie in [0, 1.25] (factors stay >= 0); "
                             f"got {self.strength}")
        if not 0.0 < self.blur_sigma_min <= self.blur_sigma_max:
            raise SuiteError("augment: need 0 < blur_sigma_min <= blur_sigma_max")
        if not 0.0 < self.blur_kernel <= 1.0:
            raise SuiteError(f"augment.blur_kernel must lie in (0, 1]; got {self.blur_kernel}")


def _uniform(shape, lo: float, hi: float, g: torch.Generator, like: Tensor) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)


def _bernoulli(n: int, p: float, g: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(n, generator=g, device=like.device) < p  # (N,) bool


def gray(x: Tensor) -> Tensor:
    """(N, 1, H, W) luma of RGB images (N, 3, H, W)."""
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)
    return torch.einsum("nchw,c->nhw", x, w)[:, None]


def random_resized_crop(x: Tensor, cfg: SimCLRAugmentConfig, g: torch.Generator) -> Tensor:
    """A random crop of each image, resized back to the input size, flipped with ``hflip_p``."""
    n, _, h, w = x.shape
    t = _CROP_TRIES
    area = _uniform((n, t), cfg.min_scale, cfg.max_scale, g, x)  # (N, T) fraction of the area
    log_r = _uniform((n, t), math.log(cfg.min_ratio), math.log(cfg.max_ratio), g, x)
    r = torch.exp(log_r)  # (N, T) width / height in pixels
    cw = torch.sqrt(area * r * (h / w))  # (N, T) crop width, as a fraction of the image width
    ch = torch.sqrt(area / r * (w / h))  # (N, T) crop height, as a fraction of the image height
    fits = (cw <= 1) & (ch <= 1)  # (N, T)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (N, 1) first fitting try
    ok = fits.any(dim=1)  # (N,)
    one = torch.ones((), device=x.device, dtype=x.dtype)
    cw = torch.where(ok, cw.gather(1, first)[:, 0], one)  # (N,) the whole image when none fit
    ch = torch.where(ok, ch.gather(1, first)[:, 0], one)
    # centre in normalised coordinates [-1, 1], so that the crop lies inside the image
    cx = (1 - cw) * _uniform(n, -1.0, 1.0, g, x)  # (N,)
    cy = (1 - ch) * _uniform(n, -1.0, 1.0, g, x)
    flip = torch.where(_bernoulli(n, cfg.hflip_p, g, x), -one, one)  # (N,)
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([cw * flip, zero, cx], 1),
                         torch.stack([zero, ch, cy], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _hue_matrices(shift: Tensor) -> Tensor:
    """(N, 3, 3) RGB -> RGB matrices rotating the YIQ chroma plane by ``2*pi*shift``."""
    dev, dt = shift.device, shift.dtype
    to_yiq = torch.tensor(_YIQ, device=dev, dtype=dt)
    from_yiq = torch.tensor(_YIQ_INV, device=dev, dtype=dt)
    a = 2 * math.pi * shift  # (N,)
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, c, -s], 1),
                       torch.stack([zero, s, c], 1)], 1)  # (N, 3, 3)
    return from_yiq @ rot @ to_yiq  # (N, 3, 3)


def color_jitter(x: Tensor, cfg: SimCLRAugmentConfig, g: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation and hue jitter in a random order per image, applied to
    each image with probability ``jitter_p`` (the others are returned unchanged)."""
    n = x.shape[0]
    s = cfg.strength
    on = _bernoulli(n, cfg.jitter_p, g, x)  # (N,)

    lo, hi = max(0.0, 1 - 0.8 * s), 1 + 0.8 * s
    b = _uniform(n, lo, hi, g, x)[:, None, None, None]  # (N, 1, 1, 1) brightness factor
    c = _uniform(n, lo, hi, g, x)[:, None, None, None]  # contrast
    sat = _uniform(n, lo, hi, g, x)[:, None, None, None]  # saturation
    hue = _hue_matrices(_uniform(n, -0.2 * s, 0.2 * s, g, x))  # (N, 3, 3)
    order = torch.rand(n, 4, generator=g, device=x.device).argsort(dim=1)  # (N, 4) permutations

    ops = (
        lambda v: (v * b).clamp(0, 1),
        lambda v: (c * v + (1 - c) * gray(v).mean(dim=(2, 3), keepdim=True)).clamp(0, 1),
        lambda v: (sat * v + (1 - sat) * gray(v)).clamp(0, 1),
        lambda v: torch.einsum("nij,njhw->nihw", hue, v).clamp(0, 1),
    )
    v = x
    for slot in range(4):
        pick = order[:, slot]  # (N,) which operation each image applies in this slot
        out = v
        for k, op in enumerate(ops):
            out = torch.where((pick == k)[:, None, None, None], op(v), out)
        v = out
    return torch.where(on[:, None, None, None], v, x)


def random_grayscale(x: Tensor, p: float, g: torch.Generator) -> Tensor:
    """Each image replaced by its luma (on all three channels) with probability ``p``."""
    m = _bernoulli(x.shape[0], p, g, x)[:, None, None, None]  # (N, 1, 1, 1)
    return torch.where(m, gray(x).expand_as(x), x)


def gaussian_blur(x: Tensor, cfg: SimCLRAugmentConfig, g: torch.Generator) -> Tensor:
    """Each image blurred with probability ``blur_p`` by a Gaussian of random sigma (pixels),
    kernel side ``blur_kernel`` of the image (odd); separable, reflect padding."""
    n, ch, h, w = x.shape
    k = max(3, int(cfg.blur_kernel * min(h, w)) // 2 * 2 + 1)
    k = min(k, (min(h, w) - 1) // 2 * 2 + 1)  # reflect padding needs k // 2 < side
    on = _bernoulli(n, cfg.blur_p, g, x)  # (N,)
    sigma = _uniform(n, cfg.blur_sigma_min, cfg.blur_sigma_max, g, x)  # (N,)
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2  # (k,)
    ker = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)  # (N, k)
    ker = ker / ker.sum(dim=1, keepdim=True)
    delta = (t == 0).to(x.dtype).expand(n, k)
    ker = torch.where(on[:, None], ker, delta)  # identity kernel where not blurred
    ker = ker.repeat_interleave(ch, dim=0)  # (N*C, k): one kernel per image channel
    v = x.reshape(1, n * ch, h, w)
    v = F.conv2d(F.pad(v, (k // 2, k // 2, 0, 0), mode="reflect"), ker[:, None, None, :],
                 groups=n * ch)
    v = F.conv2d(F.pad(v, (0, 0, k // 2, k // 2), mode="reflect"), ker[:, None, :, None],
                 groups=n * ch)
    return v.reshape(n, ch, h, w)


def simclr_augment(x: Tensor, cfg: SimCLRAugmentConfig, g: torch.Generator) -> Tensor:
    """One SimCLR view of each image of ``x`` (N, 3, H, W), float values in [0, 1]; the result
    has the same shape, dtype and device and stays in [0, 1]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise SuiteError(f"simclr_augment expects RGB images (N, 3, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SuiteError(f"simclr_augment expects float images in [0, 1]; got {x.dtype}")
    v = random_resized_crop(x, cfg, g)
    v = color_jitter(v, cfg, g)
    v = random_grayscale(v, cfg.grayscale_p, g)
    if cfg.blur_p > 0:
        v = gaussian_blur(v, cfg, g)
    return v
