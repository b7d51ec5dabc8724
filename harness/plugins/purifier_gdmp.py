"""Purifier `gdmp`: GDMP (Wang et al. 2022), rounds whose reverse steps are guided toward the input."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import DENOISER, SAMPLER, diffusion_config, diffusion_time, looped_rounds, rounds_nfe


SPECS = (PluginSpec(
    "purifier", "gdmp", "harness.purify.pipeline:build",
    params={
        "denoiser": DENOISER,
        "t_s": diffusion_time(0.1, "diffusion time per round: step (int >= 1) or fraction of T"),
        "loops": Param("int", 4, low=1, high=1000, help="diffuse/denoise rounds"),
        **SAMPLER,
        "guidance": Param("str", "mse", choices=("mse", "ssim"),
                          help="distance whose gradient pulls each reverse step toward the input"),
        "guidance_scale": Param("float", 1.0, low=0.0, high=1e6,
                                help="s in x_{t-1} mean − s·β·∇d(x_t, sqrt(ᾱ_t)·x_in), d summed over "
                                     "pixels; 1.0 pulls a round's mean ~20% toward the input at "
                                     "t_s=0.1 (mse); 0 = unguided"),
    },
    capabilities=frozenset({"stochastic"}),
    configure=lambda p: {**diffusion_config(p, looped_rounds(p)), "guidance": p["guidance"],
                         "guidance_scale": p["guidance_scale"]},
    nfe=lambda p: rounds_nfe(p, looped_rounds(p)),
    label=("t_s", "loops", "guidance", "guidance_scale"),
    help="GDMP (Wang et al. 2022): rounds whose reverse steps are guided toward the input "
         "(MSE or SSIM); ensemble paths with eval_runs",
),)
