"""Backbones (CIFAR ResNet with option-A shortcuts, pre-activation Wide ResNet) and the weighting net.

Plain torch.nn modules: the MW-Net step runs them functionally (torch.func.functional_call), so no
"meta" copies of the layers are needed. Architectures and initialisation follow
docs/protocol.md, "Backbones".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mwnet.batchnorm import BatchNorm2d
from mwnet.config import BackboneSpec, parse_shape


# --------------------------------------------------------------------------------------------
# ResNet (He et al., CIFAR variant): 6n+2 layers, option-A shortcuts


class _ShortcutA(nn.Module):
    """Option A: subsample by `stride` and zero-pad the new channels evenly on both sides; no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class _ResNetBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = BatchNorm2d(width)
        stages, in_planes = [], width
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_ResNetBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # Kaiming normal, fan-in (protocol); the linear bias keeps PyTorch's default, as upstream.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis): 6n+4 layers, pre-activation blocks


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # Where the width changes the 1x1 shortcut sees the pre-activated input (as in the reference code).
        return out + (x if self.equal_in_out else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, dropout: float):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        groups, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_WideBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, (2.0 / (k * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # as the reference WRN code; the weight keeps PyTorch's default

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        # 8x8 average pool at 32x32 input; adaptive so smaller test inputs work too.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def build_backbone(spec: BackboneSpec, num_classes: int) -> nn.Module:
    """The classifier a recipe names: resnet (depth 6n+2, first width) or wrn (depth 6n+4, widen factor)."""
    if spec.name == "resnet":
        return ResNetCifar(spec.depth, spec.width, num_classes)
    if spec.name == "wrn":
        return WideResNet(spec.depth, spec.width, num_classes, spec.dropout)
    raise ValueError(f"unknown backbone {spec.name!r}: expected 'resnet' or 'wrn'")


# --------------------------------------------------------------------------------------------
# Weighting net V(loss; phi)


class WeightingNet(nn.Module):
    """'1-h1-...-hk-1': Linear+ReLU hidden layers of the listed widths, a final Linear to 1, a sigmoid.

    Input: per-sample losses, shape (N, 1); output: weights in (0, 1), shape (N, 1).
    Default PyTorch Linear init (protocol).
    """

    def __init__(self, shape: str):
        super().__init__()
        widths = parse_shape(shape)  # ValueError with the expected form on malformed input
        self.shape = shape
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-2], widths[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.layers = nn.Sequential(*layers)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(losses))
