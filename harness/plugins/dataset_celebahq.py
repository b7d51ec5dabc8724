"""Data set `celebahq`: CelebA-HQ images, label = one binary attribute."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import DATASET_ROOT
from .dataset_imagenet import SIZE

SPECS = (PluginSpec(
    "dataset", "celebahq", "harness.data.celebahq:load",
    params={"root": DATASET_ROOT, "size": SIZE,
            "attribute": Param("str", help="binary label: a column of the attribute list, "
                                           "e.g. Eyeglasses or Smiling")},
    image_side=lambda p: int(p["size"]),
    # size: unknown here; the catalogued asset holds 30,000 images but a local root holds what
    # its attribute list says, so the loader's own count (checked by the worker) is the bound.
    help="CelebA-HQ images with list_attr_celeba.txt; label = one attribute (0/1); decoded per batch",
),)
