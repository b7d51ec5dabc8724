"""The purifier as configured by a grid cell, and the defended model (purify → classify).

LoRID, DiffPure-style and multi-step purification are the same loop with different
lists of rounds; GDMP is LoRID's loop with each reverse step guided toward the input
(purify.guidance); `none` and `tucker` are the reference rows. Each purifier plugin says
which configuration it is through its `configure` hook (harness/plugins/purifier_*.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..rng import ExampleNoise
from .guidance import make_guide
from .samplers import EpsFn, GuideFn, reverse
from .schedule import Schedule
from .tucker import tucker_denoise


@dataclass
class PurifierConfig:
    """Resolved purifier parameters, whatever plugin named them."""

    rounds: list[float | int] = field(default_factory=list)  # diffusion time of each round
    sampler: str = "ddpm"
    steps: int = 0
    tucker: str = "none"  # none | pre | noisy | every_loop | only
    tucker_patch: int = 4
    tucker_stride: int = 2
    tucker_rank: float = 0.5
    tucker_per: str = "image"
    denoiser: str | None = None
    guidance: str = "none"  # none | mse | ssim (GDMP): pull each reverse step toward the input
    guidance_scale: float = 0.0

    @classmethod
    def from_plugin(cls, name: str, params: dict[str, Any]) -> "PurifierConfig":
        """The configuration a purifier plugin's own `configure` hook gives for its parameters."""
        from .. import registry

        return cls(**registry.get("purifier", name).configure(params))


class Purifier(nn.Module):
    """x in [0,1] → purified x in [0,1]; differentiable end to end.

    `noise` supplies every random draw (forward diffusion and ancestral steps), one
    counter-based stream per example (harness.rng). `nfe` counts denoiser evaluations per example in the last call.
    """

    def __init__(self, config: PurifierConfig, eps_fn: EpsFn | None = None,
                 schedule: Schedule | None = None, checkpoint: bool = True, clip_denoised: bool = True):
        super().__init__()
        self.config = config
        self.eps_fn = eps_fn
        if isinstance(eps_fn, nn.Module):
            self.denoiser = eps_fn  # registered so .to(device) moves it
        self.schedule = schedule or Schedule.linear()
        self.checkpoint = checkpoint
        self.clip_denoised = clip_denoised
        self.nfe = 0
        # BPDA (attacks.bpda): every stage but the Tucker step runs without a graph and passes
        # the gradient through as the identity; the forward values are unchanged.
        self.straight_through = False
        self._ks = [self.schedule.step_of(t) for t in config.rounds]
        if self._ks and eps_fn is None:
            raise ValueError("a diffusion purifier needs a noise predictor")

    @property
    def stochastic(self) -> bool:
        return bool(self._ks)

    def _stage(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn(x); with `straight_through` set, its exact value with the identity as backward."""
        if not self.straight_through:
            return fn(x)
        with torch.no_grad():
            y = fn(x)
        return y.detach() + (x - x.detach())  # adds an exact zero: the value stays fn(x)

    def _tucker(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return tucker_denoise(x, patch=c.tucker_patch, stride=c.tucker_stride, rank=c.tucker_rank, per=c.tucker_per)

    def forward(self, x01: torch.Tensor, noise: ExampleNoise | None = None) -> torch.Tensor:
        c = self.config
        self.nfe = 0
        if c.tucker == "only":
            return self._stage(_clamp01, self._tucker(x01))
        if not self._ks:
            return x01
        if noise is None:
            raise ValueError("a stochastic purifier needs a noise source")
        return self._stage(_clamp01, (self.run_rounds(2 * x01 - 1, noise) + 1) / 2)

    def run_rounds(self, x: torch.Tensor, noise: ExampleNoise) -> torch.Tensor:
        """The diffuse/denoise rounds on x in the diffusion range [-1,1] (no final clamp)."""
        c = self.config
        self.nfe = 0
        if c.tucker == "pre":
            x = self._tucker(x)
        guide = self._guide(x)
        for i, k in enumerate(self._ks):
            z = noise.randn_like(x)
            x_t = self._stage(lambda v: self.schedule.diffuse(v, k, z), x)  # noqa: B023 (called at once)
            if c.tucker == "every_loop" or (c.tucker == "noisy" and i == 0):
                x_t = self._tucker(x_t)
            x = self._stage(lambda v: self._denoise(v, k, noise, guide), x_t)  # noqa: B023
        return x

    def _guide(self, x_in: torch.Tensor) -> GuideFn | None:
        """GDMP's guidance toward this call's input x_in (diffusion range); None when off.

        A scale of 0 is no guidance at all: the unguided steps, bit for bit."""
        c = self.config
        if c.guidance == "none" or c.guidance_scale == 0:
            return None
        return make_guide(c.guidance, c.guidance_scale, x_in, self.schedule)

    def _denoise(self, x_t: torch.Tensor, k: int, noise: ExampleNoise,
                 guide: GuideFn | None = None) -> torch.Tensor:
        c = self.config
        x, n = reverse(self.eps_fn, x_t, k, self.schedule, steps=c.steps, sampler=c.sampler,
                       noise=noise, clip=self.clip_denoised, checkpoint=self.checkpoint, guide=guide)
        self.nfe += n
        return x


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1)


def build(name: str, params: dict[str, Any], device: torch.device | str = "cpu",
          eps_fn: EpsFn | None = None) -> Purifier:
    """The purifier a cell names on device; a diffusion purifier uses `eps_fn`, else the
    bundled denoiser its `denoiser` parameter names."""
    config = PurifierConfig.from_plugin(name, params)
    if config.rounds and eps_fn is None:
        from ..models.bundled import load_denoiser

        eps_fn = load_denoiser(config.denoiser or "digits-ddpm").to(device)
    return Purifier(config, eps_fn if config.rounds else None).to(device)


class Defended(nn.Module):
    """classifier(purifier(x)): the whole pipeline an exact-gradient attack differentiates."""

    def __init__(self, purifier: Purifier, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x01: torch.Tensor, noise: ExampleNoise | None = None) -> torch.Tensor:
        return self.classifier(self.purifier(x01, noise))
