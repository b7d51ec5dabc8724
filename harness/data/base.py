"""The dataset interface the worker uses: length, and examples by index."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ArrayDataset:
    """An in-memory dataset: images in [0,1] (N×C×H×W) and labels (N)."""

    x: torch.Tensor
    y: torch.Tensor
    name: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: list[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.x[idx], self.y[idx]


def selection(n_available: int, data_seed: int) -> np.ndarray:
    """The data-set index of each example position: a permutation fixed by data_seed.

    Example k of a cell is always data item selection(...)[k], so growing the number of
    examples only appends, and any shard can be recomputed alone.
    """
    return np.random.RandomState(data_seed).permutation(n_available)
