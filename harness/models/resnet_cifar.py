"""The CIFAR ResNet-18 in the key layout AutoAttack's repository and pyautoattack ship.

AutoAttack's `examples/resnet.py` (the network its `examples/model_test.pt` was trained as)
is the widely copied kuangliu/pytorch-cifar ResNet: a 3×3 stem without max-pool, four stages
of basic blocks, a 4×4 average pool and a linear head. Its checkpoint keys, which this module
reproduces so such files load strictly without renaming:

    conv1.weight  bn1.*
    layer{1..4}.<i>.{conv1,bn1,conv2,bn2}.*
    layer{2..4}.0.shortcut.{0.weight,1.*}        (1×1 conv + batch norm where stride/width change)
    linear.weight  linear.bias

Differences from torchvision's ResNet-18 (`resnet.py`): stem, no max-pool, `shortcut` not
`downsample`, `linear` not `fc`. No normalisation anywhere, as in the original (AutoAttack's
example evaluates it on `ToTensor()` images): inputs are images in [0,1], 32×32 (the fixed
4×4 pool then leaves 1×1, as the original's `view` needs).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CifarBlock(nn.Module):
    """conv3×3(stride)-bn-relu-conv3×3-bn, plus the shortcut, then relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # an empty Sequential is the identity and holds no keys, as in the original
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with basic blocks for 32×32 images in [0,1]; returns logits."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin = (64, 128, 256, 512), 64
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = [CifarBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            cin = cout
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            out = getattr(self, f"layer{i}")(out)
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


def resnet18_cifar(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-18 (11,173,962 parameters with 10 classes), AutoAttack's example layout."""
    return CifarResNet((2, 2, 2, 2), num_classes)
