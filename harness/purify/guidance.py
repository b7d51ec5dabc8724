"""GDMP guidance (Wang et al. 2022): pull each reverse step toward the purifier's input.

At reverse step t the reference is the input diffused to that level, ȳ_t = sqrt(ᾱ_t)·x_in
(its mean: no extra noise is drawn, so the guided and unguided purifiers share every draw).
The guidance score is g = −scale·∇_{x_t} d(x_t, ȳ_t), and `samplers.reverse` shifts the step
by β_step·g (the step's variance times the score, as in classifier guidance).

Distances, per example (so no example's guidance depends on the rest of its batch), written
as sums over the example's n = C·H·W elements so that a scale means the same on 8×8 digits
and on 256×256 images:
- mse:  d = Σ (x_t − ȳ_t)²             → ∇d = 2(x_t − ȳ_t), analytic (n × the gradient of the mean)
- ssim: d = n·(1 − SSIM(x_t, ȳ_t))      → by autograd; SSIM with a 3×3 gaussian window (σ = 1),
  valid convolution, data range 2 ([-1,1] images), the usual C1, C2.

Default scale 1.0 (mse): over one round the β_step add up to about −log ᾱ_{t_s}
(≈ 0.1 at t_s = 0.1 of T), so the round's mean moves ≈ 2·scale·0.1 = 20% of the way
toward the diffused input, whatever the respacing: a pull that keeps the digit's identity
without undoing the purification. The two distances' scales are not interchangeable.

The gradient of the purifier flows through the guidance term too (the attack differentiates
it as part of the purifier): mse is analytic, so that is free; ssim's score is built with
create_graph=True only when the outer graph is being recorded (grad enabled and an input
requires grad) — otherwise (evaluation, BPDA's graph-free forward) it is a local, detached
computation.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .schedule import Schedule

GUIDANCES = ("mse", "ssim")
_DATA_RANGE = 2.0  # images in [-1, 1]
_C1 = (0.01 * _DATA_RANGE) ** 2
_C2 = (0.03 * _DATA_RANGE) ** 2


def _window(channels: int, dtype: torch.dtype, device: torch.device, size: int = 3,
            sigma: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each example ([B]), differentiable in x and y (3×3 gaussian window)."""
    c = x.shape[1]
    w = _window(c, x.dtype, x.device)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, w, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return s.flatten(1).mean(1)


def distance(kind: str, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """d(x, ref) per example ([B]), in the summed form described above."""
    if kind == "mse":
        return (x - ref).pow(2).flatten(1).sum(1)
    if kind == "ssim":
        return x[0].numel() * (1 - ssim(x, ref))
    raise ValueError(f"guidance must be one of {GUIDANCES}, not {kind!r}")


def distance_grad(kind: str, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """∇_x d(x, ref), differentiable in x and ref where the outer graph is being recorded."""
    if kind == "mse":
        return 2 * (x - ref)
    recording = torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)
    with torch.enable_grad():
        xg = x if (recording and x.requires_grad) else x.detach().requires_grad_(True)
        d = distance(kind, xg, ref if recording else ref.detach())
        (g,) = torch.autograd.grad(d.sum(), xg, create_graph=recording)
    return g


def make_guide(kind: str, scale: float, x_in: torch.Tensor,
               schedule: Schedule) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """guide(x_t, t) = −scale·∇_{x_t} d(x_t, sqrt(ᾱ_t)·x_in), for samplers.reverse."""
    if kind not in GUIDANCES:
        raise ValueError(f"guidance must be one of {GUIDANCES}, not {kind!r}")

    def guide(x_t: torch.Tensor, t: int) -> torch.Tensor:
        ref = float(schedule.alphas_bar[t]) ** 0.5 * x_in
        return -scale * distance_grad(kind, x_t, ref)

    return guide
