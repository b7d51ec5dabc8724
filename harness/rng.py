"""Explicit randomness: every draw comes from a per-example generator seeded by
(cell hash, example index, purpose, counter), so any example can be recomputed alone
and the rows do not depend on batch size, shard size or the number of ranks.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and machines)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ExampleNoise:
    """Gaussian noise for a batch in which row i always comes from generator i.

    `subset(mask)` gives a view over some rows (sharing generators), which the attack
    uses when only part of a batch is still being attacked.
    """

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        self.seeds = list(seeds)
        self.device = torch.device(device)
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.generators = [torch.Generator(device=gen_device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor [len(self), *shape]: one independent draw per example."""
        draws = [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but noise for {len(self)} examples")
        return self.randn(tuple(x.shape[1:]), x.dtype)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        draws = [torch.rand(tuple(x.shape[1:]), generator=g, device=g.device, dtype=x.dtype)
                 for g in self.generators]
        return torch.stack(draws).to(self.device)

    def subset(self, index: torch.Tensor) -> "ExampleNoise":
        sub = ExampleNoise.__new__(ExampleNoise)
        sub.device = self.device
        sub.generators = [self.generators[int(i)] for i in index]
        sub.seeds = [self.seeds[int(i)] for i in index]
        return sub


def tile(noise: ExampleNoise, times: int) -> ExampleNoise:
    """Noise for a batch repeated `times` (EOT copies): copy j of example i draws from
    example i's generator, so the draws stay a function of the example alone."""
    return noise.subset(torch.arange(len(noise)).repeat(times))
