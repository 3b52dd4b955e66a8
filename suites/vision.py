"""Pieces the image suites share: batched on-device augmentation and a small CNN encoder.

Augmentation runs on whole batches on the batch's device (one ``affine_grid``/``grid_sample``
call per view), never per image through PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR-style views for small grey images: random resized crop, rotation, translation,
    optional horizontal flip, brightness/contrast jitter and Gaussian noise."""

    min_scale: float = 0.6  # smallest crop side, as a fraction of the image
    rotate_deg: float = 15.0
    translate: float = 0.15  # as a fraction of the half-width
    hflip: bool = False
    jitter: float = 0.4  # brightness/contrast strength
    noise: float = 0.05


def augment(x: Tensor, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """One random view of each image of ``x`` (N, C, H, W), values in [0, 1]."""
    n = x.shape[0]
    dev, dt = x.device, x.dtype

    def u(lo: float, hi: float) -> Tensor:  # (N,) uniform in [lo, hi)
        return lo + (hi - lo) * torch.rand(n, generator=g, device=dev, dtype=dt)

    s = u(cfg.min_scale, 1.0)  # (N,) crop side: < 1 zooms in
    ang = u(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180)  # (N,)
    tx, ty = u(-cfg.translate, cfg.translate), u(-cfg.translate, cfg.translate)
    flip = torch.ones(n, device=dev, dtype=dt)
    if cfg.hflip:
        flip = torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -flip, flip)
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = u(1 - cfg.jitter, 1 + cfg.jitter)[:, None, None, None]  # (N, 1, 1, 1)
    bright = u(-cfg.jitter / 2, cfg.jitter / 2)[:, None, None, None]
    v = v * contrast + bright
    if cfg.noise > 0:
        v = v + cfg.noise * torch.randn(v.shape, generator=g, device=dev, dtype=dt)
    return v


class SmallCNN(nn.Module):
    """Three conv blocks (the last two strided; the first too with ``stem_stride=2``, for
    28x28 inputs on a CPU budget), average pooling to a ``pool`` x ``pool`` grid (1: global
    average pooling; 2 keeps where in the image a part lies), and a two-layer projection head.
    ``features`` is the 4*width*pool^2 representation that evaluation probes;
    ``forward`` the unit-norm projection the objective sees."""

    def __init__(self, in_channels: int = 1, width: int = 32, proj_dim: int = 64,
                 stem_stride: int = 1, pool: int = 1):
        super().__init__()
        if pool < 1:
            raise ValueError(f"SmallCNN: pool must be >= 1; got {pool}")

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        w = width
        self.backbone = nn.Sequential(
            *block(in_channels, w, stem_stride), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
        )
        self.feature_dim = 4 * w * pool * pool
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, proj_dim)
        )
        self.out_dim = proj_dim

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)  # (N, 4w)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)  # (N, proj_dim)
