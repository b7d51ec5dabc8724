"""Data set `digits`: sklearn's bundled 8×8 digits (no download)."""
from __future__ import annotations

from ..registry import PluginSpec

SPECS = (PluginSpec(
    "dataset", "digits", "harness.data.digits:load",
    image_side=lambda p: 8,
    size=lambda p: 450,  # the held-out split of harness.data.digits: 1797 - N_TRAIN (1347)
    help="sklearn's bundled 8x8 digits, fixed held-out split (no download)",
),)
