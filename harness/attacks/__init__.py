"""Attacks: each takes the defended model, a batch in [0,1], labels, its parameters and a
noise source for its own randomness, and returns an `AttackResult` (adversarial inputs
inside the budget, and what the attack met on the way)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AttackResult:
    """What an attack returns for a batch of n examples.

    grad_evals: gradient evaluations per example (steps × EOT samples; measured for AutoAttack).
    found_by: per example, the sub-attack that fooled it ("" if none); None where the attack
    has no sub-attacks. grad_nonfinite: per example, how many of its gradient evaluations
    were non-finite (zeroed before the step, so the attack went on without them); None is
    read as all zero (an attack that takes no gradient)."""

    x_adv: Any  # torch.Tensor; Any keeps this module torch-free
    grad_evals: int = 0
    found_by: list[str] | None = None
    grad_nonfinite: list[int] | None = None
