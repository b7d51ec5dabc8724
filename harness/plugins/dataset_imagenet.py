"""Data set `imagenet`: the validation set, decoded per batch, resized and centre-cropped."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import DATASET_ROOT

SIZE = Param("int", 256, low=1, high=4096,
             help="images are resized (shorter side) and center-cropped to size x size")

SPECS = (PluginSpec(
    "dataset", "imagenet", "harness.data.imagenet:load",
    params={"root": DATASET_ROOT, "size": SIZE},
    image_side=lambda p: int(p["size"]),
    size=lambda p: 50_000,  # the ILSVRC-2012 validation set (the catalogue's image count)
    help="ImageNet validation set: <root>/val/<wnid>/*.JPEG, or <root>/val/*.JPEG with "
         "<root>/labels.txt; decoded per batch",
),)
