"""Classifiers `wrn-28-10` and `wrn-70-16`: RobustBench's WideResNets, read as RobustBench reads them."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import CHECKPOINT

CLASSES = {"classes": Param("int", 10, choices=(10, 100), help="outputs: 10 (CIFAR-10) or 100 (CIFAR-100)")}

SPECS = (
    PluginSpec(
        "classifier", "wrn-28-10", "harness.models.zoo:load_wrn_28_10", params={**CHECKPOINT, **CLASSES},
        help="WideResNet-28-10 (RobustBench wide_resnet.py keys), CIFAR-10/100, inputs in [0,1]",
    ),
    PluginSpec(
        "classifier", "wrn-70-16", "harness.models.zoo:load_wrn_70_16", params={**CHECKPOINT, **CLASSES},
        help="WideResNet-70-16 (RobustBench dm_wide_resnet.py keys, Swish), CIFAR-10/100 "
             "normalisation inside, inputs in [0,1]",
    ),
)
