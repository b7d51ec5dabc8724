"""Purifier `none`: no defence, the bare classifier (every table's reference row)."""
from __future__ import annotations

from ..registry import PluginSpec

SPECS = (PluginSpec(
    "purifier", "none", "harness.purify.pipeline:build",
    capabilities=frozenset({"no_defence"}),
    configure=lambda p: {},
    help="no defence: the bare classifier",
),)
