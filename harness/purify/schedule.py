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
        """A diffusion time as a step index (harness.difftime's one rule: an int >= 1 is the
        step count, a float in (0,1) a fraction of T)."""
        from ..difftime import diffusion_steps

        return diffusion_steps(t, self.T) - 1  # index into alphas_bar

    def diffuse(self, x0: torch.Tensor, t_index: int, noise: torch.Tensor) -> torch.Tensor:
        ab = float(self.alphas_bar[t_index])
        return ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise
