"""PGD with EOT (Madry et al. 2018; Athalye et al. 2018).

gradient="exact": the loss gradient flows through every purification step of the
defended model (purifier checkpointed), averaged over `eot` stochastic purifications.
gradient="greybox": the gradient of the classifier alone; the result is then purified.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..rng import ExampleNoise, tile
from .budget import ascent, project, random_start


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gradient: str,
                  eot: int, noise: ExampleNoise) -> torch.Tensor:
    """∇_x of the summed cross-entropy, averaged over EOT purifications (one batched pass)."""
    x = x.detach().requires_grad_(True)
    if gradient == "greybox":
        loss = F.cross_entropy(model.classifier(x), y, reduction="sum")
    else:
        reps = x.repeat(eot, *([1] * (x.dim() - 1)))
        logits = model(reps, tile(noise, eot))
        loss = F.cross_entropy(logits, y.repeat(eot), reduction="sum") / eot
    (grad,) = torch.autograd.grad(loss, x)
    # A NaN from a degenerate SVD must not poison the step; a zero step is visible in the results.
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise) -> tuple[torch.Tensor, int]:
    """Returns (x_adv, gradient evaluations per example)."""
    norm, eps = params["norm"], params["eps"]
    x_adv = random_start(x, norm, eps, noise) if params["random_start"] else x.clone()
    eot = 1 if params["gradient"] == "greybox" else params["eot"]
    for _ in range(params["steps"]):
        g = loss_gradient(model, x_adv, y, params["gradient"], eot, noise)
        x_adv = project(x_adv + ascent(g, norm, params["step_size"]), x, norm, eps).detach()
    return x_adv, params["steps"] * eot
