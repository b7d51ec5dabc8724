"""WideResNet in RobustBench's architecture and checkpoint key layout.

The key layout is that of RobustBench's `model_zoo/architectures/wide_resnet.py` (the
Zagoruyko & Komodakis WRN as used by e.g. `Standard` and `Carmon2019Unlabeled`):

    conv1.weight
    block{1,2,3}.layer.<i>.{bn1,conv1,bn2,conv2}.*   (+ .convShortcut.weight where in != out)
    bn1.*  fc.weight  fc.bias

ReLUs (relu1/relu2 per block, relu at the end) have no parameters, so they hold no keys.
Input normalisation is NOT part of this module or its state dict: `wrn_28_10()` and
`wrn_70_16()` return it inside `Normalized`, which takes images in [0,1]. Most RobustBench
CIFAR-10 WRN-28-10 checkpoints expect raw [0,1] inputs (identity normalisation, the default).

Caveat: RobustBench's WRN-70-16 entries (Gowal2020Uncovering, Rebuffi2021Fixing, ...) use a
different module (`dm_wide_resnet.py`, keys `init_conv`, `layer.<i>.block.<j>.batchnorm_0`,
`logits`, ...). `wrn_70_16()` here has the same depth/width in the wide_resnet.py key layout;
a DM-layout checkpoint needs its keys renamed before `checkpoints.load_into`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import Normalized, init_weights


class BasicBlock(nn.Module):
    """Pre-activation block: bn-relu-conv3x3-bn-relu-conv3x3, 1×1 conv shortcut when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out
                             else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:  # the shortcut also sees the pre-activated input, as in the original
            x = self.relu1(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32×32 inputs (already normalised); returns logits."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 drop_rate: float = 0.0, bias_last: bool = True):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, not {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)
        self.n_channels = ch[3]
        init_weights(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        # global average pooling (= avg_pool2d(out, 8) for 32×32 inputs)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wrn(depth: int, widen_factor: int, num_classes: int = 10,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Normalized:
    """A WideResNet behind `Normalized` (inputs in [0,1]; identity normalisation by default)."""
    return Normalized(WideResNet(depth, widen_factor, num_classes), mean, std)


def wrn_28_10(num_classes: int = 10, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> Normalized:
    """WRN-28-10 (36,479,194 parameters with 10 classes)."""
    return wrn(28, 10, num_classes, mean, std)


def wrn_70_16(num_classes: int = 10, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> Normalized:
    """WRN-70-16 (about 266.8 M parameters with 10 classes), wide_resnet.py key layout."""
    return wrn(70, 16, num_classes, mean, std)
