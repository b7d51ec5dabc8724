"""WideResNet in DeepMind's architecture and RobustBench's `dm_wide_resnet.py` key layout.

RobustBench's strongest CIFAR entries (Wang2023Better_WRN-70-16, Rebuffi2021Fixing_70_16_*,
Gowal2020Uncovering_70_16*, ...) are `DMWideResNet(num_classes, depth, width,
activation_fn=Swish, mean, std)`. This module reproduces that module tree, so their
checkpoints load strictly (`checkpoints.load_into`) without renaming:

    init_conv.weight
    layer.<g>.block.<i>.{batchnorm_0,conv_0,batchnorm_1,conv_1}.*   g in 0..2
    layer.<g>.block.0.shortcut.weight                 (only where in != out widths)
    batchnorm.*  logits.weight  logits.bias

Activations (relu_0/relu_1 per block, relu at the end) hold no keys, whatever their kind.

Differences from `wideresnet.py` (the Zagoruyko & Komodakis layout used for WRN-28-10):
- The normalisation is inside the network, as in the original; inputs are images in [0,1].
  Its constants are *non-persistent* buffers, as in RobustBench 1.1.1: the published files
  (Wang2023Better_WRN-70-16, ...) hold no `mean`/`std`, and `load_model` accepts them.
  Files that do hold them (written by a RobustBench version with persistent buffers, or by
  this harness before) load too, when their values are this model's: a load pre-hook drops
  them, and refuses values that differ (the plugin's normalisation would silently disagree).
- The first 3×3 conv of every block has padding=0 and the input is padded by hand to mimic
  TensorFlow's `SAME`: (1,1,1,1) at stride 1, (0,1,0,1) (right/bottom only) at stride 2. At
  stride 2 this samples a different pixel grid from padding=1, so the weights are not
  interchangeable with the classic layout even after renaming.
- Optional input padding (`padding`, 0 for all RobustBench entries) is applied to the [0,1]
  image, before normalisation; pooling is a fixed 8×8 average as in the original, so the
  network expects 32×32 inputs (32 + 2·padding with padding, of which only the pooled
  top-left 8×8 of the final map counts, exactly as the original does).
- Activation is Swish, x·sigmoid(x) (`nn.SiLU`; the original's hand-written autograd Function
  computes the same function and the same analytic derivative).
- Weights keep PyTorch's default initialisation, as in the original: the module exists to
  receive pretrained checkpoints.

The parameter count equals the classic layout's at the same depth/width (266,796,506 for
WRN-70-16 with 10 classes; 266,888,756 with 100): the same convolutions, batch norms and
biased linear head, under other names. The state dict has the same 407 entries as the original's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

NORMALISATION = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}
POOL = 8  # final feature map side for 32×32 inputs (two stride-2 groups)


class DMBlock(nn.Module):
    """Pre-activation block: bn-act-[SAME pad]-conv3×3(stride)-bn-act-conv3×3, 1×1 conv shortcut
    when widths differ (the shortcut then sees the pre-activated input, as in the original)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 activation_fn: type[nn.Module] = nn.SiLU):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride} (1 or 2)")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation_fn()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation_fn()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
                         if self.has_shortcut else None)
        # TF `SAME` for a 3×3 kernel: symmetric at stride 1, right/bottom only at stride 2
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        shortcut = self.shortcut(act) if self.shortcut is not None else x
        out = self.conv_0(F.pad(act, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return shortcut + out


class DMBlockGroup(nn.Module):
    """`num_blocks` blocks; only the first changes width and stride. Keys: `block.<i>.*`."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int,
                 activation_fn: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.block = nn.Sequential(*[
            DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                    activation_fn)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-depth-width for 32×32 images in [0,1] (normalised inside); returns logits."""

    def __init__(self, num_classes: int = 10, depth: int = 28, width: int = 10,
                 activation_fn: type[nn.Module] = nn.SiLU,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 padding: int = 0, num_input_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, not {depth}")
        n = (depth - 4) // 6
        # non-persistent, as in RobustBench 1.1.1: published checkpoints do not carry them
        shape = (num_input_channels, 1, 1)
        self._norm = {"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}
        self.register_buffer("mean", torch.tensor(self._norm["mean"]).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(self._norm["std"]).view(shape), persistent=False)
        self.register_load_state_dict_pre_hook(_saved_normalisation)
        self.padding = padding
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(num_input_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, ch[0], ch[1], 1, activation_fn),
            DMBlockGroup(n, ch[1], ch[2], 2, activation_fn),
            DMBlockGroup(n, ch[2], ch[3], 2, activation_fn))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(ch[3], num_classes)
        self.num_channels = ch[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)  # zero (black) border in [0,1] space, as the original
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        out = F.avg_pool2d(out, POOL)
        if out.shape[-2:] != (1, 1):
            # the original's view(-1, C) would silently fold extra cells into the batch
            raise ValueError(f"DMWideResNet expects 32×32 inputs; the pooled map is {tuple(out.shape[-2:])}")
        return self.logits(out.flatten(1))


def _saved_normalisation(model: DMWideResNet, state: dict, prefix: str, _meta: dict, _strict: bool,
                         _missing: list, _unexpected: list, errors: list) -> None:
    """Load pre-hook: drop `mean`/`std` entries equal to the model's constants (files written
    while they were persistent); report differing ones (torch then refuses the load)."""
    for name, want in model._norm.items():
        got = state.pop(prefix + name, None)
        if got is None:
            continue
        expect = torch.tensor(want, device="cpu").view(-1, 1, 1)  # also under a meta device context
        if got.shape != expect.shape or (not got.is_meta and not torch.allclose(
                got.detach().double().cpu(), expect.double(), rtol=0, atol=1e-6)):
            shown = [round(v, 6) for v in got.flatten().tolist()] if not got.is_meta else tuple(got.shape)
            errors.append(f"{prefix + name}: the checkpoint's normalisation {shown} is not this "
                          f"model's {list(want)} (check the classes/dataset parameter)")


def dm_wrn(depth: int = 70, width: int = 16, num_classes: int = 10, dataset: str = "cifar10",
           device: torch.device | str = "cpu") -> DMWideResNet:
    """A Swish DMWideResNet with `dataset`'s normalisation, built directly on `device`
    (`"meta"` allocates nothing: shapes and key names only)."""
    if dataset not in NORMALISATION:
        raise ValueError(f"unknown dataset {dataset!r}; one of {sorted(NORMALISATION)}")
    mean, std = NORMALISATION[dataset]
    with torch.device(device):
        return DMWideResNet(num_classes, depth, width, nn.SiLU, mean, std)


def wrn_70_16_dm(num_classes: int = 10, dataset: str = "cifar10",
                 device: torch.device | str = "cpu") -> DMWideResNet:
    """WRN-70-16, DM layout (266,796,506 parameters with 10 classes, 266,888,756 with 100)."""
    return dm_wrn(70, 16, num_classes, dataset, device)


def wrn_28_10_dm(num_classes: int = 10, dataset: str = "cifar10",
                 device: torch.device | str = "cpu") -> DMWideResNet:
    """WRN-28-10, DM layout (36,479,194 parameters with 10 classes), e.g. Gowal2020Uncovering_28_10_extra."""
    return dm_wrn(28, 10, num_classes, dataset, device)
