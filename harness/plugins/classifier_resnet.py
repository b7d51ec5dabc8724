"""Classifiers `resnet-50`, `resnet-18-binary` (torchvision keys) and `resnet-18-cifar`
(AutoAttack's CIFAR ResNet-18 keys)."""
from __future__ import annotations

from ..registry import PluginSpec
from ._types import CHECKPOINT

SPECS = (
    PluginSpec(
        "classifier", "resnet-50", "harness.models.zoo:load_resnet50", params=dict(CHECKPOINT),
        help="ResNet-50 (torchvision keys), ImageNet normalisation inside, resized to 224",
    ),
    PluginSpec(
        "classifier", "resnet-18-binary", "harness.models.zoo:load_resnet18_binary", params=dict(CHECKPOINT),
        help="ResNet-18 with 2 outputs (torchvision keys): a CelebA-HQ attribute classifier",
    ),
    PluginSpec(
        "classifier", "resnet-18-cifar", "harness.models.zoo:load_resnet18_cifar", params=dict(CHECKPOINT),
        help="CIFAR-10 ResNet-18 (AutoAttack/pyautoattack examples/resnet.py keys: shortcut, linear), "
             "no normalisation, inputs in [0,1]",
    ),
)
