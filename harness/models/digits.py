"""The small models the project trains on the bundled digits and ships."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# diffusers UNet2DModel for 1×8×8 images: attention at 4×4 (about 0.18 M parameters;
# small enough that exact gradients through many denoising steps run on 2 CPU cores).
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)


class DigitsCNN(nn.Module):
    """Two conv layers and two linear layers; takes images in [0,1]."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0,1] input inside the model so callers never normalise.
        return self.head(self.features(x * 2 - 1))


def make_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


class UNetEps(nn.Module):
    """Adapts a diffusers UNet2DModel to the purifier's noise-predictor call (x_t, t) → ε̂."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # A learned-variance UNet also outputs variance channels; the sampler uses ε only.
        return self.unet(x_t, t).sample[:, : x_t.shape[1]]
