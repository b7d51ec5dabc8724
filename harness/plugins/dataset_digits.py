"""Data set `digits`: sklearn's bundled 8×8 digits (no download)."""
from __future__ import annotations

from ..registry import PluginSpec

SPECS = (PluginSpec(
    "dataset", "digits", "harness.data.digits:load",
    image_side=lambda p: 8,
    help="sklearn's bundled 8x8 digits, fixed held-out split (no download)",
),)
