"""The one rule for a diffusion time (`t_s`, a `schedule` entry), torch-free.

An integer (or an integral float >= 1) is a number of forward steps in [1, T]; a float in
(0, 1) is a fraction of T, rounded to a step. Anything else (0, 1.5, 5000, a negative) is
refused. The grid validator (a Param's check), the plan's cost estimate and the sampler's
schedule all read a time through `diffusion_steps`, so what plans is what runs.
"""
from __future__ import annotations

from typing import Any

T = 1000  # forward steps of every supported backbone (DDPM linear β, 1e-4..0.02)


def diffusion_steps(t: Any, total: int = T) -> int:
    """Forward steps the time stands for, in [1, total]; ValueError if it is not a valid time."""
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise ValueError(f"{t!r} is not a diffusion time")
    if isinstance(t, int) or (t >= 1 and float(t).is_integer()):
        n = int(t)
    elif 0 < t < 1:
        n = int(round(t * total))
    else:
        raise ValueError(f"{t!r} is not a diffusion time: expected an integer step in [1, {total}] "
                         "or a fraction in (0, 1)")
    if not 1 <= n <= total:
        raise ValueError(f"{t!r} is {n} steps; expected 1..{total}")
    return n


def problem(t: Any) -> str | None:
    """Why t is not a valid diffusion time, or None (a Param's check_value)."""
    try:
        diffusion_steps(t)
    except ValueError as exc:
        return str(exc)
    return None


def reverse_steps(t: Any, steps: int = 0) -> int:
    """Denoiser evaluations of one round from t: every step, or `steps` when respaced
    (respacing never adds steps)."""
    n = diffusion_steps(t)
    return min(steps, n) if steps > 0 else n
