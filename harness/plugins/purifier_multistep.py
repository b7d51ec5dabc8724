"""Purifier `multistep`: gradual-noise purification (Lee & Kim), one round per listed time."""
from __future__ import annotations

from ..registry import PluginSpec
from ._types import DENOISER, SAMPLER, diffusion_config, diffusion_times, rounds_nfe

SPECS = (PluginSpec(
    "purifier", "multistep", "harness.purify.pipeline:build",
    params={
        "denoiser": DENOISER,
        "schedule": diffusion_times("diffusion time of each round, e.g. [30, 30, 50]"),
        **SAMPLER,
    },
    capabilities=frozenset({"stochastic"}),
    configure=lambda p: diffusion_config(p, p["schedule"]),
    nfe=lambda p: rounds_nfe(p, p["schedule"]),
    help="multi-step (gradual noise) purification: one round per listed t",
),)
