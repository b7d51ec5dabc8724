"""ResNets in torchvision's architecture and checkpoint key layout, and the input wrapper.

Key layout (torchvision `models/resnet.py`, ResNet v1.5: the stride sits on the 3×3 conv):

    conv1.weight  bn1.*
    layer{1..4}.<i>.{conv1,bn1,conv2,bn2[,conv3,bn3]}.*  (+ .downsample.0.weight, .downsample.1.*)
    fc.weight  fc.bias

`resnet50()` (25,557,032 parameters) and `resnet18_binary()` (ResNet-18 with 2 outputs,
11,177,538 parameters) return the network inside `Normalized`, which takes images in [0,1],
applies the ImageNet mean/std and, for `resnet50()`, resizes to 224×224.

Resizing: the ImageNet purifier works at 256×256, torchvision's ImageNet classifiers at
224×224. `Normalized(size=224)` resizes any other input size to 224×224 with bilinear
interpolation (align_corners=False, no antialiasing: cheap and differentiable, so attacks get
exact gradients through it). This is a resize of the whole 256 image, not torchvision's eval
centre crop; callers wanting the crop should crop before calling. 224×224 input is untouched.
Normalisation constants are non-persistent buffers: never part of any checkpoint.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def init_weights(model: nn.Module, zero_linear_bias: bool = False) -> None:
    """He-normal convolutions, unit/zero batch norms (and zero Linear biases when asked), in
    module order: the init torchvision's ResNet and RobustBench's WideResNet share."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif zero_linear_bias and isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class Normalized(nn.Module):
    """x in [0,1] → optional resize → (x − mean) / std → `net`. The wrapped network is `.net`."""

    def __init__(self, net: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, size: int | None = None):
        super().__init__()
        self.net = net
        self.size = size
        mean = (0.0, 0.0, 0.0) if mean is None else tuple(mean)
        std = (1.0, 1.0, 1.0) if std is None else tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net((x - self.mean) / self.std)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet (inputs already normalised); returns logits."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, size: int | None = 224) -> Normalized:
    """ResNet-50 (25,557,032 parameters) with ImageNet normalisation; resizes inputs to `size`."""
    return Normalized(ResNet(Bottleneck, (3, 4, 6, 3), num_classes), IMAGENET_MEAN, IMAGENET_STD, size)


def resnet18(num_classes: int = 1000, size: int | None = 224) -> Normalized:
    """ResNet-18 (11,689,512 parameters with 1000 classes) with ImageNet normalisation."""
    return Normalized(ResNet(BasicBlock, (2, 2, 2, 2), num_classes), IMAGENET_MEAN, IMAGENET_STD, size)


def resnet18_binary(size: int | None = None) -> Normalized:
    """A binary (e.g. CelebA-HQ attribute) classifier: ResNet-18, 2 outputs, 11,177,538 parameters.

    ImageNet normalisation (for fine-tuning from ImageNet weights); no resize by default (the
    global average pool takes the purifier's 256×256 as is)."""
    return Normalized(ResNet(BasicBlock, (2, 2, 2, 2), 2), IMAGENET_MEAN, IMAGENET_STD, size)
