"""Purifier `tucker`: Tucker low-rank patch denoising alone (reference row; deterministic)."""
from __future__ import annotations

from ..registry import PluginSpec
from ._types import TUCKER, tucker_config

SPECS = (PluginSpec(
    "purifier", "tucker", "harness.purify.pipeline:build",
    params=dict(TUCKER),
    configure=lambda p: {"tucker": "only", **tucker_config(p)},
    help="Tucker low-rank patch denoising alone",
),)
