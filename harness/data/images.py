"""Image files decoded on demand: the data sets too big to hold in memory (ImageNet, CelebA-HQ).

Each image is read with Pillow when `take()` asks for it, converted to RGB, resized so its
shorter side is `size` (bilinear, as torchvision's Resize on a PIL image) and center-cropped to
size×size (torchvision's CenterCrop offsets), then scaled to [0,1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import AssetError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def load_image(path: Path, size: int) -> np.ndarray:
    """One image as float32 3×size×size in [0,1]: shorter side to size, then center crop."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w <= h:
                nw, nh = size, max(1, int(size * h / w))
            else:
                nw, nh = max(1, int(size * w / h)), size
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left = int(round((nw - size) / 2.0))
            top = int(round((nh - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise AssetError(f"{path}: missing (listed by the data set, not on disk)") from None
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise AssetError(f"{path}: cannot decode image ({e})") from None
    return arr.transpose(2, 0, 1).astype(np.float32) / 255.0


@dataclass
class LazyImageDataset:
    """Image paths and labels; `take` decodes just the asked images (N×3×size×size, [0,1])."""

    paths: list[Path]
    labels: np.ndarray  # int64, one per path
    size: int = 256
    name: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            return (torch.zeros((0, 3, self.size, self.size), dtype=torch.float32),
                    torch.zeros((0,), dtype=torch.int64))
        x = np.stack([load_image(self.paths[i], self.size) for i in idx])
        return torch.from_numpy(x), torch.from_numpy(self.labels[idx].copy())
