"""Data sets `cifar10` and `cifar100`: the official python pickles, 32×32."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import DATASET_ROOT

SPECS = (
    PluginSpec(
        "dataset", "cifar10", "harness.data.cifar:load_cifar10",
        params={"root": DATASET_ROOT},
        image_side=lambda p: 32,
        size=lambda p: 10_000,  # the official test batch
        help="CIFAR-10 test set: <root>/cifar-10-batches-py/test_batch (python version), 32x32",
    ),
    PluginSpec(
        "dataset", "cifar100", "harness.data.cifar:load_cifar100",
        params={"root": DATASET_ROOT,
                "labels": Param("str", "fine", choices=("fine", "coarse"),
                                help="fine (100 classes) or coarse (20 superclasses) labels")},
        image_side=lambda p: 32,
        size=lambda p: 10_000,  # the official test batch
        help="CIFAR-100 test set: <root>/cifar-100-python/test (python version), 32x32",
    ),
)
