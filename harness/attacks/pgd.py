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
from . import AttackResult
from .budget import ascent, project, random_start
from .finite import sanitize

LogitsFn = Callable[[torch.Tensor, ExampleNoise], torch.Tensor]  # (x, noise) -> logits
# x_adv -> (loss gradient at x_adv, per example: how many of its EOT gradients were non-finite)
GradientFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def eot_gradient(logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, eot: int,
                 noise: ExampleNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """∇_x of the summed cross-entropy of logits_fn, averaged over `eot` draws in one batched
    pass (copy j of example i takes example i's j-th successive draw), and per example the number
    of its `eot` gradients that were non-finite. Those are zeroed (a NaN must not poison the
    step) and counted, never dropped silently: see attacks.finite."""
    n = x.shape[0]
    reps = x.detach().repeat(eot, *([1] * (x.dim() - 1))).requires_grad_(True)
    logits = logits_fn(reps, tile(noise, eot))
    loss = F.cross_entropy(logits, y.repeat(eot), reduction="sum") / eot
    (grad,) = torch.autograd.grad(loss, reps)  # per copy: each copy's loss reaches only it
    grad, bad = sanitize(grad)
    return grad.view(eot, n, *x.shape[1:]).sum(0), bad.view(eot, n).sum(0)


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gradient: str,
                  eot: int, noise: ExampleNoise) -> tuple[torch.Tensor, torch.Tensor]:
    """∇_x of the summed cross-entropy, averaged over EOT purifications (one batched pass),
    with the per-example count of non-finite gradients."""
    if gradient == "greybox":
        return eot_gradient(lambda v, _noise: model.classifier(v), x, y, 1, noise)
    return eot_gradient(model, x, y, eot, noise)


StopFn = Callable[[torch.Tensor], torch.Tensor]  # x_adv -> per example: stop moving it (bool)


def run(x: torch.Tensor, gradient_fn: GradientFn, params: dict[str, Any],
        noise: ExampleNoise, stop: StopFn | None = None) -> tuple[torch.Tensor, list[int]]:
    """The PGD loop: `steps` steepest-ascent steps of `step_size` along gradient_fn, each
    projected onto the (norm, eps) ball around x and [0,1]; random start if asked.
    Returns (x_adv, per example the number of non-finite gradient evaluations met).

    With `stop`, an example for which stop(x_adv) holds after a step keeps that x_adv from then
    on, and the loop ends once every example has stopped: the smallest perturbation along the
    path that does what stop asks (see `margin_reached`), rather than the budget's largest-loss
    point. A crafted data set carries such examples; the sweeps' robust accuracy never stops."""
    norm, eps = params["norm"], params["eps"]
    x_adv = random_start(x, norm, eps, noise) if params["random_start"] else x.clone()
    nonfinite = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(params["steps"]):
        g, bad = gradient_fn(x_adv)
        nonfinite += torch.where(done, torch.zeros_like(bad), bad)
        moved = project(x_adv + ascent(g, norm, params["step_size"]), x, norm, eps).detach()
        if stop is None:
            x_adv = moved
            continue
        x_adv = torch.where(done.view(-1, *([1] * (x.dim() - 1))), x_adv, moved)
        with torch.no_grad():
            done |= stop(x_adv)
        if bool(done.all()):
            break
    return x_adv, nonfinite.tolist()


def margin_reached(classifier: torch.nn.Module, y: torch.Tensor, kappa: float,
                   levels: int | None = 255) -> StopFn:
    """A `run` stop: the classifier's best wrong logit exceeds the true one by at least kappa
    on the image as it will be stored (quantised to `levels` + 1 grey levels; None: as is)."""
    def stop(x_adv: torch.Tensor) -> torch.Tensor:
        v = torch.round(x_adv * levels) / levels if levels else x_adv
        z = classifier(v)
        true = z.gather(1, y[:, None])[:, 0]
        return z.scatter(1, y[:, None], float("-inf")).amax(1) - true >= kappa
    return stop


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise, stop: StopFn | None = None) -> AttackResult:
    eot = 1 if params["gradient"] == "greybox" else params["eot"]
    steps = 0  # taken: fewer than params["steps"] where a stop ended the loop

    def gradient(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps
        steps += 1
        return loss_gradient(model, xa, y, params["gradient"], eot, noise)

    x_adv, nonfinite = run(x, gradient, params, noise, stop)
    return AttackResult(x_adv, steps * eot, grad_nonfinite=nonfinite)
