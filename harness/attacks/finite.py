"""Non-finite gradients are counted, never silently dropped.

A NaN or infinite input gradient (a degenerate SVD, a NaN-producing network) would turn a
step into nothing, and the defence would look robust for the wrong reason: gradient
masking. Attacks zero such gradients so the step can go on, and count them per example;
the count is a result column (`grad_nonfinite`) and the report flags the cell.
"""
from __future__ import annotations

import torch


def nonfinite_rows(grad: torch.Tensor) -> torch.Tensor:
    """A bool per row (first dimension): some entry of its gradient is NaN or infinite."""
    return ~torch.isfinite(grad).flatten(1).all(1)


def sanitize(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad with non-finite rows zeroed, their mask). A partly non-finite row is zeroed
    whole: its finite entries are not trustworthy either."""
    bad = nonfinite_rows(grad)
    if bad.any():
        grad = torch.where(bad.view(-1, *([1] * (grad.dim() - 1))), torch.zeros_like(grad), grad)
    return grad, bad
