"""The DDPM noise schedule (Ho et al. 2020): linear betas over T steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch

T_DEFAULT = 1000


@dataclass(frozen=True)
class Schedule:
    """ᾱ_t for t = 0..T-1 (index t is the t+1-th noising step, as in diffusers)."""

    alphas_bar: torch.Tensor  # float64, shape [T]

    @property
    def T(self) -> int:
        return len(self.alphas_bar)

    @classmethod
    def linear(cls, T: int = T_DEFAULT, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    def step_of(self, t: float | int) -> int:
        """A diffusion time as a step index: an int >= 1 is the step count, a float in (0,1) a fraction of T."""
        if isinstance(t, bool):
            raise ValueError("t must be a number")
        if isinstance(t, int) or (isinstance(t, float) and t >= 1 and t.is_integer()):
            n = int(t)
        elif 0 < t < 1:
            n = int(round(t * self.T))
        else:
            raise ValueError(f"t={t!r}: expected an integer step in [1, {self.T}] or a fraction in (0, 1)")
        if not 1 <= n <= self.T:
            raise ValueError(f"t={t!r} is {n} steps; expected 1..{self.T}")
        return n - 1  # index into alphas_bar

    def diffuse(self, x0: torch.Tensor, t_index: int, noise: torch.Tensor) -> torch.Tensor:
        ab = float(self.alphas_bar[t_index])
        return ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise
