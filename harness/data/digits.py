"""sklearn's bundled 8x8 digits: real data that needs no download.

The split is fixed (a seeded permutation, 1347 train / 450 test) so the bundled models
never see the test images and every machine evaluates the same examples.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import ArrayDataset

N_TRAIN = 1347
SPLIT_SEED = 0


def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N×1×8×8 in [0,1], labels int64) for split 'train' or 'test'."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(y))
    idx = order[:N_TRAIN] if split == "train" else order[N_TRAIN:]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return x[idx], y[idx]


def load(params: dict[str, Any], split: str = "test") -> ArrayDataset:
    x, y = arrays(split)
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), name="digits")
