"""Purifier `lorid`: LoRID, `loops` rounds of diffuse-then-denoise at an early time `t_s`,
with an optional Tucker step (shared/design/lorid-method.md)."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import (DENOISER, SAMPLER, TUCKER, TUCKER_PLACES, diffusion_config, diffusion_time, looped_rounds,
                     rounds_nfe, tucker_config)

LOOPS = Param("int", 3, low=1, high=1000, help="diffuse/denoise rounds")

SPECS = (PluginSpec(
    "purifier", "lorid", "harness.purify.pipeline:build",
    params={
        "denoiser": DENOISER,
        "t_s": diffusion_time(0.1, "diffusion time per round: step (int >= 1) or fraction of T"),
        "loops": LOOPS,
        **SAMPLER,
        "tucker": Param("str", "none", choices=TUCKER_PLACES, help="where the Tucker step runs"),
        **TUCKER,
    },
    capabilities=frozenset({"stochastic"}),
    configure=lambda p: {**diffusion_config(p, looped_rounds(p)), "tucker": p["tucker"], **tucker_config(p)},
    nfe=lambda p: rounds_nfe(p, looped_rounds(p)),
    label=("t_s", "loops"),
    help="LoRID: L rounds of diffuse-then-denoise at an early time, optional Tucker step",
),)
