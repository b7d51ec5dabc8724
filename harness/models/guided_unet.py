"""OpenAI guided-diffusion's `UNetModel`, re-implemented so its published checkpoints load as is.

The module tree mirrors the original's (github.com/openai/guided-diffusion, unet.py) name for
name, so `256x256_diffusion_uncond.pt` (552,814,086 parameters, fp32 on disk) loads with
`load_state_dict(strict=True)`: `time_embed.{0,2}`, `input_blocks.N.M`, `middle_block.{0,1,2}`,
`output_blocks.N.M`, `out.{0,2}`; ResBlocks hold `in_layers`, `emb_layers`, `out_layers` and
`skip_connection`, attention blocks `norm`, `qkv` and `proj_out` (1-D convolutions).
Everything runs in fp32: the original's fp16 torso is a speed option and changes no weights.
There is no internal gradient checkpointing; the purifier checkpoints whole reverse steps.
Wrap with `GuidedEps` for the purifier's (x_t, t) → ε̂ call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 1000  # ImageNet, for class-conditional checkpoints


@dataclass(frozen=True)
class GuidedUNetConfig:
    """The original's command-line flags (script_util.create_model), not its constructor args."""

    image_size: int = 256
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes in pixels
    num_heads: int = 4  # used only when num_head_channels == -1
    num_head_channels: int = 64
    learn_sigma: bool = True
    class_cond: bool = False
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    use_new_attention_order: bool = False
    dropout: float = 0.0
    in_channels: int = 3

    @property
    def out_channels(self) -> int:
        # A learned variance doubles the output: ε̂ then the variance interpolation v.
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def attention_ds(self) -> tuple[int, ...]:
        # The original converts resolutions to downsample rates: attention where ds is one of these.
        return tuple(self.image_size // r for r in self.attention_resolutions)


# The published 256×256 unconditional ImageNet model (README flags of 256x256_diffusion_uncond.pt).
GUIDED_256_UNCOND = GuidedUNetConfig()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embeddings of shape (N, dim): cosines first, then sines, as the original."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    # The original's GroupNorm32: 32 groups, default eps; its float32 upcast is a no-op in fp32.
    return nn.GroupNorm(32, channels)


def _zeroed(module: nn.Module) -> nn.Module:
    # The original zero-initialises each residual branch's last layer; only matters for training
    # from scratch, kept so an untrained model behaves like the original's.
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; optionally resamples by 2."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        # Sequential indices are part of the key names (in_layers.2, out_layers.3): keep the
        # parameter-free SiLU and Dropout slots where the original has them.
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        # The original's skip is a 1×1 convolution whenever the width changes (use_conv is never set).
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        # Parameter-free, as the original's h_upd/x_upd: nearest upsampling or 2×2 average pooling.
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # Resampling sits between the activation and the first convolution, on both branches.
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.new_order = use_new_attention_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (b, 3c, T)
        n, d, length = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.new_order:  # split q/k/v first, then heads
            q, k, v = (z.reshape(b * n, d, length) for z in qkv.chunk(3, dim=1))
        else:  # the checkpoints' (legacy) layout: heads first, each head's block holds q, k, v
            q, k, v = qkv.reshape(b * n, 3 * d, length).split(d, dim=1)
        # The original scales q and k by d^-1/4 each: the same 1/√d softmax temperature as SDPA's
        # default; SDPA picks a memory-efficient kernel on GPU.
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(h.transpose(1, 2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class _TimestepSequential(nn.Sequential):
    """nn.Sequential that hands the timestep embedding to its ResBlocks (keys stay `N.M`)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class _Downsample(nn.Module):
    """Strided 3×3 convolution; used instead of a down ResBlock when resblock_updown is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Upsample(nn.Module):
    """Nearest ×2 then a 3×3 convolution; used instead of an up ResBlock when resblock_updown is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class GuidedUNet(nn.Module):
    """guided-diffusion's UNetModel (2-D, fp32): forward(x, t[, y]) → (B, out_channels, H, W)."""

    def __init__(self, config: GuidedUNetConfig = GUIDED_256_UNCOND):
        super().__init__()
        self.config = cfg = config
        mc = cfg.num_channels
        emb_dim = 4 * mc
        attn_ds = set(cfg.attention_ds)

        def res(ch_in: int, ch_out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, **kw)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, cfg.num_heads, cfg.num_head_channels, cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(NUM_CLASSES, emb_dim)

        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([_TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]  # widths of the activations the decoder concatenates back, in order
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(_TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(_TimestepSequential(
                    res(ch, ch, down=True) if cfg.resblock_updown else _Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = _TimestepSequential(res(ch), attn(ch), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(attn(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else _Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_TimestepSequential(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,C,H,W), t (B,) timesteps on the original 1000-step schedule, y (B,) class labels."""
        if (y is None) == self.config.class_cond:
            raise ValueError("pass class labels y if and only if the model is class-conditional")
        emb = self.time_embed(timestep_embedding(t, self.config.num_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def guided_unet(config: GuidedUNetConfig = GUIDED_256_UNCOND,
                device: str | torch.device = "cpu") -> GuidedUNet:
    """An untrained GuidedUNet built directly on `device` ("meta": shapes only, no memory)."""
    # Building under the device context allocates each parameter there once: no 2.2 GB CPU
    # detour for the 256 model on a GPU, and nothing at all on meta.
    with torch.device(device):
        return GuidedUNet(config)


class GuidedEps(nn.Module):
    """Adapts a GuidedUNet to the purifier's noise-predictor call (x_t, t) → ε̂."""

    def __init__(self, unet: GuidedUNet):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B,C,H,W) in [-1,1], t (B,) or scalar integer timesteps → ε̂ of x_t's shape."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        # With learn_sigma the last C channels parameterise the reverse variance; the harness's
        # samplers use the fixed posterior variance, so only ε̂ (the first C channels) is needed.
        return self.unet(x_t, t)[:, : x_t.shape[1]]
