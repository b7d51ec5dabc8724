"""Purifier `diffpure`: DiffPure-style, one diffuse/denoise round at t* (DDPM ancestral or DDIM)."""
from __future__ import annotations

from ..registry import PluginSpec
from ._types import DENOISER, SAMPLER, diffusion_config, diffusion_time, rounds_nfe

SPECS = (PluginSpec(
    "purifier", "diffpure", "harness.purify.pipeline:build",
    params={
        "denoiser": DENOISER,
        "t_s": diffusion_time(0.1, "diffusion time t*: step or fraction of T"),
        **SAMPLER,
    },
    capabilities=frozenset({"stochastic"}),
    configure=lambda p: diffusion_config(p, [p["t_s"]]),
    nfe=lambda p: rounds_nfe(p, [p["t_s"]]),
    label=("t_s",),
    help="DiffPure-style: one diffuse/denoise round at t* (DDPM ancestral or DDIM)",
),)
