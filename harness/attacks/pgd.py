"""PGD with EOT (Madry et al. 2018; Athalye et al. 2018).

gradient="exact": the loss gradient flows through every purification step of the
defended model (purifier checkpointed), averaged over `eot` stochastic purifications.
gradient="greybox": the gradient of the classifier alone; the result is then purified.

`run` is the projected-ascent loop alone, over any gradient function: BPDA reuses it
with its own (approximate) gradient.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..rng import ExampleNoise, tile
from .budget import ascent, project, random_start

LogitsFn = Callable[[torch.Tensor, ExampleNoise], torch.Tensor]  # (x, noise) -> logits
GradientFn = Callable[[torch.Tensor], torch.Tensor]  # x_adv -> loss gradient at x_adv


def eot_gradient(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, eot: int,
                 noise: ExampleNoise) -> torch.Tensor:
    """∇_x of the summed cross-entropy of logits_fn, averaged over `eot` draws in one batched
    pass (copy j of example i draws from example i's generator)."""
    x = x.detach().requires_grad_(True)
    reps = x.repeat(eot, *([1] * (x.dim() - 1)))
    logits = logits_fn(reps, tile(noise, eot))
    loss = F.cross_entropy(logits, y.repeat(eot), reduction="sum") / eot
    (grad,) = torch.autograd.grad(loss, x)
    # A NaN from a degenerate SVD must not poison the step; a zero step is visible in the results.
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gradient: str,
                  eot: int, noise: ExampleNoise) -> torch.Tensor:
    """∇_x of the summed cross-entropy, averaged over EOT purifications (one batched pass)."""
    if gradient == "greybox":
        return eot_gradient(lambda v, _noise: model.classifier(v), x, y, 1, noise)
    return eot_gradient(model, x, y, eot, noise)


def run(x: torch.Tensor, gradient_fn: GradientFn, params: dict[str, Any],
        noise: ExampleNoise) -> torch.Tensor:
    """The PGD loop: `steps` steepest-ascent steps of `step_size` along gradient_fn, each
    projected onto the (norm, eps) ball around x and [0,1]; random start if asked."""
    norm, eps = params["norm"], params["eps"]
    x_adv = random_start(x, norm, eps, noise) if params["random_start"] else x.clone()
    for _ in range(params["steps"]):
        g = gradient_fn(x_adv)
        x_adv = project(x_adv + ascent(g, norm, params["step_size"]), x, norm, eps).detach()
    return x_adv


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise) -> tuple[torch.Tensor, int]:
    """Returns (x_adv, gradient evaluations per example)."""
    eot = 1 if params["gradient"] == "greybox" else params["eot"]
    x_adv = run(x, lambda xa: loss_gradient(model, xa, y, params["gradient"], eot, noise), params, noise)
    return x_adv, params["steps"] * eot
