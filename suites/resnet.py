"""ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition") with SimCLR's
projection head (Chen et al. 2020).

The ``cifar`` stem is the one SimCLR uses for CIFAR-10 (appendix B.9): the first convolution is
3x3 with stride 1 and the max-pool is removed, so a 32x32 image keeps its resolution through
the first stage. The ``imagenet`` stem is the original 7x7 stride-2 convolution and 3x3 stride-2
max-pool (16x fewer stage-one positions; for larger images on a tighter budget).

Written here rather than taken from ``torchvision.models`` so the stem is explicit and the model
has the suites' interface: ``features`` is the 512-d pooled representation evaluation probes,
``forward`` the unit-norm projection the objective sees.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from negbench.suites.base import SuiteError

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18: a stem, four stages of two basic blocks (widths w, 2w, 4w, 8w; the last three
    stages halve the resolution), global average pooling; then the projection head
    Linear(8w, hidden) - ReLU - Linear(hidden, proj_dim), the paper's one-hidden-layer MLP.
    NOTE: no batch norm in the head (SimCLR's code has one), so a projection never depends on
    the other items of its batch and any batch size, even 1, works in training mode."""

    def __init__(self, stem: str = "cifar", width: int = 64, proj_hidden: int = 512,
                 proj_dim: int = 128, in_channels: int = 3):
        super().__init__()
        if stem not in STEMS:
            raise SuiteError(f"resnet18: stem must be one of {', '.join(STEMS)}; got {stem!r}")
        if width < 1 or proj_hidden < 1 or proj_dim < 1:
            raise SuiteError("resnet18: width, proj_hidden and proj_dim must be >= 1")
        w = width
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, w, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w)
        widths, cin, stages = (w, 2 * w, 4 * w, 8 * w), w, []
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = 8 * w
        self.head = nn.Sequential(nn.Linear(8 * w, proj_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(proj_hidden, proj_dim))
        self.out_dim = proj_dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        v = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        v = self.layer4(self.layer3(self.layer2(self.layer1(v))))
        return F.adaptive_avg_pool2d(v, 1).flatten(1)  # (N, 8w)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)  # (N, proj_dim)
