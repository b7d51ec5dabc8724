"""Reverse diffusion from step index k down to a clean estimate, over ANY noise predictor.

`eps_fn(x_t, t) -> ε̂` with t a long tensor of shape [batch]: a diffusers UNet wrapped by
`models.digits.UNetEps`, an exact analytic predictor in tests, or anything else.
Each reverse step can be checkpointed so that exact gradients through many steps keep
memory flat; the step's noise is drawn before the checkpoint so recomputation matches.

`guide(x_t, t) -> g` (optional, GDMP-style guidance): a guidance score evaluated at each
step's input; the step's mean (ddpm) or output (ddim) is shifted by β·g, β = 1 − ᾱ_t/ᾱ_prev
the (respaced) step's variance, as classifier guidance shifts the mean by Σ·∇log p. It is
evaluated outside the checkpoint, so its own graph (small, image-sized) is kept per step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..precision import compile_wanted, compiled_function
from ..rng import ExampleNoise
from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GuideFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, schedule index t) -> guidance score
SAMPLERS = ("ddpm", "ddim")


def timesteps(k: int, steps: int) -> list[int]:
    """Respaced step indices, descending from k to 0 (steps <= 0 or > k+1 means every step)."""
    if steps <= 0 or steps >= k + 1:
        return list(range(k, -1, -1))
    return sorted({int(round(v)) for v in np.linspace(0, k, steps)}, reverse=True)


def _step(eps_fn: EpsFn, update: Callable[..., torch.Tensor], x: torch.Tensor, t: int, a: float,
          a_prev: float, sampler: str, clip: bool, z: torch.Tensor | None,
          shift: torch.Tensor | None = None) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return update(x, eps_fn(x, tt), a, a_prev, sampler == "ddim", clip, z, shift)


def _update(x: torch.Tensor, eps: torch.Tensor, a: float, a_prev: float, ddim: bool, clip: bool,
            z: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """One reverse step's arithmetic after the denoiser: x̂_0, then the DDIM (eta 0) output or the
    DDPM posterior mean plus its noise. Compiled as one kernel under HARNESS_COMPILE=1."""
    x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
    if clip:
        x0 = x0.clamp(-1, 1)
    if ddim:  # eta = 0: deterministic given x_t
        out = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        return out if shift is None else out + shift
    beta = 1 - a / a_prev  # the respaced step's beta
    mean = (a_prev ** 0.5 * beta / (1 - a)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * x
    if shift is not None:
        mean = mean + shift
    if z is None:
        return mean
    return mean + (beta * (1 - a_prev) / (1 - a)) ** 0.5 * z


def reverse(eps_fn: EpsFn, x_t: torch.Tensor, k: int, schedule: Schedule, *, steps: int = 0,
            sampler: str = "ddpm", noise: ExampleNoise | None = None, clip: bool = True,
            checkpoint: bool = False, guide: GuideFn | None = None) -> tuple[torch.Tensor, int]:
    """Denoise x_t (diffused to index k) to x̂_0; returns (x̂_0, denoiser evaluations)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    ts = timesteps(k, steps)
    ab = schedule.alphas_bar
    update = compiled_function(_update) if compile_wanted() else _update
    x = x_t
    for i, t in enumerate(ts):
        a = float(ab[t])
        a_prev = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        z = None
        if sampler == "ddpm" and i + 1 < len(ts):
            if noise is None:
                raise ValueError("the ddpm sampler needs a noise source")
            z = noise.randn_like(x)
        shift = None if guide is None else (1 - a / a_prev) * guide(x, t)
        if checkpoint and torch.is_grad_enabled():
            x = _checkpoint(_step, eps_fn, update, x, t, a, a_prev, sampler, clip, z, shift,
                            use_reentrant=False)
        else:
            x = _step(eps_fn, update, x, t, a, a_prev, sampler, clip, z, shift)
    return x, len(ts)
