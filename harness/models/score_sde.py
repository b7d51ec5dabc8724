"""Score-SDE's NCSN++ ("DDPM++ deep continuous, VP"), DiffPure's CIFAR-10 backbone, re-implemented
so the published checkpoint loads as is.

DiffPure (NVlabs/DiffPure, configs/cifar10.yml; README: "Score SDE for CIFAR-10 ...
`vp/cifar10_ddpmpp_deep_continuous`") builds yang-song/score_sde_pytorch's `NCSNpp` with
`configs/vp/cifar10_ddpmpp_deep_continuous.py` (nf 128, ch_mult (1, 2, 2, 2), 8 res blocks per
level, attention at 16×16, dropout 0.1, data centred to [-1, 1]) and restores
`pretrained/score_sde/checkpoint_8.pth` from that run. It is the *deep* variant: the plain
`vp/cifar10_ddpmpp_continuous.py` has 4 res blocks per level and about 62 M parameters.

Only what that configuration uses is implemented, and these choices are fixed:
resblock_type "biggan" (resampling inside ResnetBlockBigGANpp), fir False (nearest ×2 up,
2×2 mean down), progressive / progressive_input "none", embedding_type "positional",
conditional True, GroupNorm (min(C // 4, 32) groups, eps 1e-6), swish (SiLU), skip_rescale True,
scale_by_sigma False. The module tree mirrors the original name for name: one flat
`all_modules` ModuleList (time-embedding Linears, stem conv, ResnetBlockBigGANpp with
GroupNorm_0/Conv_0/Dense_0/GroupNorm_1/Dropout_0/Conv_1[/Conv_2], AttnBlockpp with
GroupNorm_0/NIN_0..NIN_3, the output GroupNorm and conv) plus the registered float64 `sigmas`
buffer, so the original state dict loads with `load_state_dict(strict=True)`.

Checkpoints are training states {'model', 'ema', 'optimizer', 'step'}; `score_sde_state_dict`
picks the weights DiffPure ends up with (the EMA shadow parameters). Wrap with `ScoreSdeEps`
for the purifier's (x_t, integer DDPM step) → ε̂ call.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AssetError

PREFIX = "module."  # score_sde_pytorch trains through nn.DataParallel
BUFFERS = ("sigmas",)  # the only non-parameter entry of NCSNpp's state dict
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class ScoreSdeConfig:
    """The fields of score_sde's ml_collections config that this re-implementation reads."""

    image_size: int = 32
    num_channels: int = 3
    centered: bool = True  # data.centered: the network takes [-1, 1] (else [0, 1], shifted inside)
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    skip_rescale: bool = True
    init_scale: float = 0.0
    # Only for the `sigmas` buffer (SMLD noise levels): registered by every NCSNpp, unused by a
    # VP model with positional embeddings and scale_by_sigma False, but part of the state dict.
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    # The VP SDE the checkpoint was trained with: β(t) = β_min + t (β_max − β_min), t ∈ [0, 1].
    beta_min: float = 0.1
    beta_max: float = 20.0

    @property
    def resolutions(self) -> list[int]:
        return [self.image_size // 2 ** i for i in range(len(self.ch_mult))]


# configs/vp/cifar10_ddpmpp_deep_continuous.py == DiffPure's configs/cifar10.yml model section.
SCORE_SDE_CIFAR10 = ScoreSdeConfig()


def _default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    # score_sde's default_init: JAX-style variance scaling, fan_avg, uniform; scale 0 means 1e-10
    # (the zero-ish init of residual branches' last layers). Only matters for untrained models.
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])  # 1 for Linear and NIN weights
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> nn.Conv2d:
    # ddpm_conv3x3 / ddpm_conv1x1: bias on, "same" padding, default_init weights, zero bias.
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    _default_init_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _dense(in_dim: int, out_dim: int) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    _default_init_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def timestep_embedding(labels: torch.Tensor, dim: int, max_positions: float = 10000.0) -> torch.Tensor:
    """score_sde's positional embedding (layers.get_timestep_embedding): sines first, then
    cosines, frequencies exp(−log(max_positions) · i / (dim/2 − 1)) — unlike guided-diffusion's
    cos-first, /(dim/2) variant; the labels may be fractional."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device)
                      * -(math.log(max_positions) / (half - 1)))
    args = labels.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NIN(nn.Module):
    """A 1×1 "network in network" layer stored as W (in, out) and b (out), as the original."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(_default_init_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[:, None, None]


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all positions; residual, rescaled by 1/√2 with skip_rescale."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        # Registration order is the state-dict order, which the EMA's positional list relies on.
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = (m(h).reshape(b, c, hgt * wid).transpose(1, 2) for m in (self.NIN_0, self.NIN_1, self.NIN_2))
        # The original's einsum/softmax with the C^-1/2 temperature is SDPA's default scaling.
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, hgt, wid)
        h = self.NIN_3(h)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block conditioned on the time embedding; optionally resamples by 2."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _group_norm(in_ch)
        self.up, self.down = up, down
        self.Conv_0 = _conv(in_ch, out_ch, 3)
        if temb_dim is not None:
            self.Dense_0 = _dense(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, 3, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv(in_ch, out_ch, 1)
        self.skip_rescale = skip_rescale
        self.act = act  # the model's shared SiLU, as the original (no state)
        self.in_ch, self.out_ch = in_ch, out_ch

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        # fir False: naive_upsample_2d (nearest) / naive_downsample_2d (2×2 mean), on both branches.
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class NCSNpp(nn.Module):
    """score_sde's NCSNpp restricted to the DDPM++ VP configuration: forward(x, labels) → output
    of x's shape, where labels = 999·t for continuous time t ∈ [0, 1] (the VP model's ε̂)."""

    def __init__(self, config: ScoreSdeConfig = SCORE_SDE_CIFAR10):
        super().__init__()
        self.config = cfg = config
        self.act = act = nn.SiLU()
        # np.exp(np.linspace(log σ_max, log σ_min, N)) in the original: float64. Built with torch
        # factories so a "meta" device context allocates nothing.
        self.register_buffer("sigmas", torch.exp(torch.linspace(
            math.log(cfg.sigma_max), math.log(cfg.sigma_min), cfg.num_scales, dtype=torch.float64)))
        nf, temb_dim = cfg.nf, 4 * cfg.nf

        def res(in_ch: int, out_ch: int | None = None, **kw: bool) -> ResnetBlockBigGANpp:
            return ResnetBlockBigGANpp(act, in_ch, out_ch, temb_dim, dropout=cfg.dropout,
                                       skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale, **kw)

        def attn(ch: int) -> AttnBlockpp:
            return AttnBlockpp(ch, skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale)

        modules: list[nn.Module] = [_dense(nf, temb_dim), _dense(temb_dim, temb_dim),
                                    _conv(cfg.num_channels, nf, 3)]
        skip_chans = [nf]  # widths the decoder concatenates back, in order
        in_ch = nf
        levels = len(cfg.ch_mult)
        for level, res_px in enumerate(cfg.resolutions):
            for _ in range(cfg.num_res_blocks):
                modules.append(res(in_ch, nf * cfg.ch_mult[level]))
                in_ch = nf * cfg.ch_mult[level]
                if res_px in cfg.attn_resolutions:
                    modules.append(attn(in_ch))
                skip_chans.append(in_ch)
            if level != levels - 1:
                modules.append(res(in_ch, down=True))
                skip_chans.append(in_ch)

        modules += [res(in_ch), attn(in_ch), res(in_ch)]

        for level in reversed(range(levels)):
            # Unlike the encoder, the decoder attends once per level, after all its blocks.
            for _ in range(cfg.num_res_blocks + 1):
                modules.append(res(in_ch + skip_chans.pop(), nf * cfg.ch_mult[level]))
                in_ch = nf * cfg.ch_mult[level]
            if cfg.resolutions[level] in cfg.attn_resolutions:
                modules.append(attn(in_ch))
            if level != 0:
                modules.append(res(in_ch, up=True))
        assert not skip_chans

        modules += [_group_norm(in_ch), _conv(in_ch, cfg.num_channels, 3, init_scale=cfg.init_scale)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) ([-1, 1] when config.centered, else [0, 1]); labels (B,) = 999·t."""
        cfg = self.config
        if x.shape[-2:] != (cfg.image_size, cfg.image_size):
            # The original picks attention layers by feature size: another size misroutes modules.
            raise ValueError(f"input is {tuple(x.shape[-2:])}, the model is built for {cfg.image_size}²")
        mods: Iterator[nn.Module] = iter(self.all_modules)
        temb = next(mods)(timestep_embedding(labels, cfg.nf))
        temb = next(mods)(self.act(temb))
        if not cfg.centered:
            x = 2 * x - 1.0

        hs = [next(mods)(x)]
        levels = len(cfg.ch_mult)
        for level, res_px in enumerate(cfg.resolutions):
            for _ in range(cfg.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if res_px in cfg.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != levels - 1:
                hs.append(next(mods)(hs[-1], temb))

        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        for level in reversed(range(levels)):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if cfg.resolutions[level] in cfg.attn_resolutions:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)

        h = self.act(next(mods)(h))
        return next(mods)(h)


def score_sde_cifar10(device: str | torch.device = "cpu",
                      config: ScoreSdeConfig = SCORE_SDE_CIFAR10) -> NCSNpp:
    """An untrained NCSNpp built directly on `device` ("meta": shapes only, no memory)."""
    # The device context covers parameters and the sigmas buffer alike.
    with torch.device(device):
        return NCSNpp(config)


def continuous_time(t: torch.Tensor, num_steps: int = 1000) -> torch.Tensor:
    """The VP SDE time for integer DDPM steps k ∈ [0, num_steps): (k + 1) / num_steps.

    score_sde's VPSDE uses β_i = β_min/N + i(β_max − β_min)/(N(N − 1)), i.e. DDPM's linear
    1e-4..0.02 for N = 1000, so −log ᾱ_k = Σ_{i≤k} −log(1 − β_i) ≈ ∫_0^{(k+1)/N} β(s) ds: step k has
    integrated k + 1 increments of width 1/N. That is also DiffPure's convention (noise with ᾱ at
    index t* − 1, then integrate the reverse SDE from time t*/1000). Over all k the continuous
    ᾱ((k+1)/N) matches the discrete ᾱ_k within 8.2e-4; the k/(N − 1) alternative (score_sde's
    ancestral discretisation) is off by up to 1.6e-3 and puts k = 0 at zero noise.
    """
    return (t.to(torch.float32) + 1.0) / num_steps


class ScoreSdeEps(nn.Module):
    """Adapts a continuous-time VP NCSNpp to the purifier's noise-predictor call (x_t, t) → ε̂."""

    def __init__(self, net: NCSNpp, num_steps: int = 1000):
        super().__init__()
        self.net = net
        self.num_steps = num_steps

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, H, W) in [-1, 1], t (B,) or scalar DDPM steps in [0, 999] → ε̂ of x_t's shape."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        # get_score_fn (continuous VP): labels = 999·t, score = −net(x, labels)/σ_t; since the
        # score of x_t = √ᾱ x_0 + σ_t ε is −ε/σ_t, the network's output is ε̂ itself.
        labels = continuous_time(t, self.num_steps) * 999
        if not self.net.config.centered:
            x_t = (x_t + 1) / 2  # such a model takes [0, 1] and centres it itself
        return self.net(x_t, labels)


def score_sde_state_dict(checkpoint: Mapping[str, Any], ema: bool = True) -> dict[str, torch.Tensor]:
    """The NCSNpp state dict DiffPure runs with, from a score_sde training checkpoint.

    DiffPure's restore_checkpoint loads checkpoint['model'] with strict=False into an NCSNpp that
    is *not* wrapped in DataParallel, so the 'module.'-prefixed keys match nothing and are skipped;
    it then loads checkpoint['ema'] and calls ema.copy_to(model.parameters()). Every parameter is
    therefore the EMA shadow parameter at the same position of model.parameters() (the shadow list
    is positional, no names), and the `sigmas` buffer is the config-derived one (identical to the
    checkpoint's). Here names come from checkpoint['model'] in its order (state-dict order is
    parameter order plus the one buffer), shapes are checked pairwise, and `sigmas` is taken from
    the checkpoint. With ema=False the raw training weights are returned instead.
    """
    model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(model, Mapping):
        raise AssetError("not a score_sde checkpoint: no 'model' state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        name = str(key)
        while name.startswith(PREFIX):
            name = name[len(PREFIX):]
        if not isinstance(value, torch.Tensor):
            raise AssetError(f"score_sde checkpoint: model entry {key!r} is a {type(value).__name__}")
        state[name] = value
    if not ema:
        return state
    ema_state = checkpoint.get("ema")
    shadow = ema_state.get("shadow_params") if isinstance(ema_state, Mapping) else None
    if not isinstance(shadow, (list, tuple)):
        raise AssetError("score_sde checkpoint: no 'ema' with 'shadow_params' (DiffPure uses the EMA weights)")
    names = [k for k in state if k not in BUFFERS]
    if len(shadow) != len(names):
        raise AssetError(f"score_sde checkpoint: {len(shadow)} EMA parameters for {len(names)} model parameters")
    for name, param in zip(names, shadow):
        if not isinstance(param, torch.Tensor) or param.shape != state[name].shape:
            got = tuple(param.shape) if isinstance(param, torch.Tensor) else type(param).__name__
            raise AssetError(f"score_sde checkpoint: EMA parameter for {name} is {got}, "
                             f"the model's is {tuple(state[name].shape)}")
        state[name] = param
    return state


def load_score_sde_checkpoint(path: str | Path, expected_sha256: str | None = None,
                              ema: bool = True) -> dict[str, torch.Tensor]:
    """`score_sde_state_dict` of a checkpoint file, read with torch.load(weights_only=True).

    The training state holds only tensors and plain containers (the EMA's float decay, int
    num_updates and tensor list; Adam's state and param_groups; an int step), which
    weights_only accepts; a file holding anything else is refused with AssetError.
    `checkpoints.load_checkpoint` cannot read it itself: its entries are dicts, not tensors.
    """
    from .checkpoints import read_checkpoint

    path = Path(path)
    obj = read_checkpoint(path, expected_sha256)
    try:
        return score_sde_state_dict(obj, ema=ema)
    except AssetError as e:
        raise AssetError(f"{path}: {e}") from e
