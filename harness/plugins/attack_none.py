"""Attack `none`: clean inputs (clean accuracy through the purifier and the bare classifier)."""
from __future__ import annotations

from ..registry import PluginSpec

SPECS = (PluginSpec(
    "attack", "none", "harness.attacks.none:attack",
    capabilities=frozenset({"clean"}),
    help="clean inputs",
),)
