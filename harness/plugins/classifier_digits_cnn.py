"""Classifier `digits-cnn`: the small CNN `harness train` trains on the digits, shipped."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import CHECKPOINT

SPECS = (PluginSpec(
    "classifier", "digits-cnn", "harness.models.bundled:load_classifier",
    params={"path": Param("str", "", asset="classifier",
                          help="empty = the bundled weights; else a checkpoint of the same network "
                               "(e.g. one `harness train` wrote)"),
            "sha256": CHECKPOINT["sha256"]},
    help="small CNN trained on the digits by `harness train`, shipped in the package",
),)
