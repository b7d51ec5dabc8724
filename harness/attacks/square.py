"""Square attack (Andriushchenko et al. 2020): black-box, query-based, no gradients.

It runs against the whole defended pipeline through the AutoAttack adapter (AutoAttack's
own Square: p_init 0.8, one restart, its p schedule), with a budget of `queries` model
evaluations per example. The whole attack runs under torch.no_grad(), so no graph is
ever built: the defence's gradients, masked or not, play no part. As in AutoAttack, an
example Square does not fool is returned unperturbed.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..rng import ExampleNoise
from . import AttackResult, autoattack


class _NoVersionAdvice(logging.Filter):
    """AutoAttack's randomness check advises version="rand", which means nothing to Square."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "randomized defense" not in record.getMessage()


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise) -> AttackResult:
    """Square evaluates no gradient: grad_evals 0."""
    log, quiet = logging.getLogger("auto-attack"), _NoVersionAdvice()
    log.addFilter(quiet)
    try:
        with torch.no_grad():
            x_adv, outcomes = autoattack.run(model, x, y, noise, version="custom", attacks=["square"],
                                             norm=params["norm"], eps=params["eps"], queries=params["queries"])
    finally:
        log.removeFilter(quiet)
    assert outcomes.grad_evals == 0, "Square must not evaluate gradients"
    return AttackResult(x_adv, 0, outcomes.found_by)
