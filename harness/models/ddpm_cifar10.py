"""The google/ddpm-cifar10-32 and google/ddpm-celebahq-256 noise predictors' architectures (diffusers UNet2DModel).

35,746,307 parameters: block_out_channels (128, 256, 256, 256), two ResNet layers per block,
self-attention in the second down block (16×16) and the matching up block, DDPM linear betas
1e-4..0.02 over T=1000 (the schedule is the purifier's business, not the model's).
A published folder loads through `denoisers.load_denoiser` (diffusers' own `from_pretrained`,
local files only, so its key conversions apply, wrapped by our checksum, schedule and
strictness checks), wrapped in `digits.UNetEps` for the purifier.
"""
from __future__ import annotations

from typing import Any

from torch import nn

DDPM_CIFAR10_CONFIG: dict[str, Any] = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    act_fn="silu",
    attention_head_dim=None,
    center_input_sample=False,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    mid_block_scale_factor=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    time_embedding_type="positional",
)


def ddpm_cifar10_unet() -> nn.Module:
    """An untrained UNet2DModel with google/ddpm-cifar10-32's configuration."""
    from diffusers import UNet2DModel

    return UNet2DModel(**DDPM_CIFAR10_CONFIG)


# google/ddpm-celebahq-256: the same blocks at 256×256, six levels, attention at 16×16 only;
# 113,673,219 parameters.
DDPM_CELEBAHQ_CONFIG: dict[str, Any] = dict(
    DDPM_CIFAR10_CONFIG,
    sample_size=256,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)


def ddpm_celebahq_unet() -> nn.Module:
    """An untrained UNet2DModel with google/ddpm-celebahq-256's configuration."""
    from diffusers import UNet2DModel

    return UNet2DModel(**DDPM_CELEBAHQ_CONFIG)
