"""Lp-ball geometry shared by every attack: steps, projection, random starts."""
from __future__ import annotations

import torch

from ..rng import ExampleNoise

NORMS = ("linf", "l2")


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Nearest point of the eps-ball around x, then clipped to [0,1] (which keeps it in the ball)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        delta = delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    else:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    return (x + delta).clamp(0, 1)


def ascent(grad: torch.Tensor, norm: str, step: float) -> torch.Tensor:
    """The steepest-ascent step of size `step` for that norm."""
    if norm == "linf":
        return step * grad.sign()
    return step * grad / _flat_norm(grad)


def random_start(x: torch.Tensor, norm: str, eps: float, noise: ExampleNoise) -> torch.Tensor:
    if norm == "linf":
        delta = (2 * noise.rand_like(x) - 1) * eps
    else:
        d = noise.randn_like(x)
        r = noise.rand_like(x).flatten(1)[:, :1].view(-1, *([1] * (x.dim() - 1)))
        delta = d / _flat_norm(d) * eps * r
    return project(x + delta, x, norm, eps)


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
