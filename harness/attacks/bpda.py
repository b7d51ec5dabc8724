"""BPDA+EOT (Athalye et al. 2018): the purifier runs forward in full, and the backward
pass treats it as the identity (straight-through: x_pur = x + (purify(x) - x).detach()).

tucker_backward="identity": the whole purifier passes the gradient through.
tucker_backward="exact": only the diffusion (forward noising, reverse denoising, the final
clamp) passes through; the Tucker step, where the purifier has one, keeps its exact
backward (Purifier.straight_through).
The gradient of the classifier at the purified points is averaged over `eot` stochastic
purifications; the projected-ascent loop is PGD's (pgd.run).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..rng import ExampleNoise
from . import AttackResult, pgd

TUCKER_BACKWARD = ("identity", "exact")


@contextmanager
def straight_through(purifier: torch.nn.Module) -> Iterator[None]:
    """The purifier's diffusion stages pass gradients through as the identity, inside."""
    before = purifier.straight_through
    purifier.straight_through = True
    try:
        yield
    finally:
        purifier.straight_through = before


def logits(model: torch.nn.Module, x: torch.Tensor, noise: ExampleNoise, tucker_backward: str) -> torch.Tensor:
    """The defended model's logits at x with the BPDA backward (forward values are exact)."""
    if tucker_backward == "identity":
        with torch.no_grad():
            purified = model.purifier(x, noise)
        return model.classifier(purified.detach() + (x - x.detach()))  # detach: `none` returns x itself
    if tucker_backward == "exact":
        with straight_through(model.purifier):
            return model(x, noise)
    raise ValueError(f"tucker_backward must be one of {TUCKER_BACKWARD}, not {tucker_backward!r}")


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int, noise: ExampleNoise,
                  tucker_backward: str = "identity") -> tuple[torch.Tensor, torch.Tensor]:
    """The BPDA gradient of the summed cross-entropy, averaged over `eot` purifications, with
    the per-example count of non-finite gradients (pgd.eot_gradient)."""
    return pgd.eot_gradient(lambda v, n: logits(model, v, n, tucker_backward), x, y, eot, noise)


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise) -> AttackResult:
    eot, tb = params["eot"], params["tucker_backward"]
    x_adv, nonfinite = pgd.run(x, lambda xa: loss_gradient(model, xa, y, eot, noise, tb), params, noise)
    return AttackResult(x_adv, params["steps"] * eot, grad_nonfinite=nonfinite)
