"""Classifier plugins backed by local checkpoints: the plugin's network (`build_classifier`),
the user's file read as the original code reads it (`read_classifier_state`), checksum-
verified, then PyTorch's strict load (`checkpoints.load_into`). `harness stage` builds and
reads through the same two functions (on the meta device), so stage and run agree."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoints import unwrap_state, load_into, read_checkpoint, robustbench_state


def _wrn_28_10(params: dict[str, Any]) -> nn.Module:
    from .wideresnet import wrn_28_10

    return wrn_28_10(num_classes=params.get("classes", 10))


def _wrn_70_16(params: dict[str, Any]) -> nn.Module:
    from .dm_wideresnet import wrn_70_16_dm

    classes = params.get("classes", 10)
    # no device argument: the caller's `torch.device(...)` context decides (meta for staging)
    return wrn_70_16_dm(num_classes=classes, dataset="cifar100" if classes == 100 else "cifar10",
                        device=torch.get_default_device())


def _resnet50(params: dict[str, Any]) -> nn.Module:
    from .resnet import resnet50

    return resnet50()


def _resnet18_binary(params: dict[str, Any]) -> nn.Module:
    from .resnet import resnet18_binary

    return resnet18_binary()


def _digits_cnn(params: dict[str, Any]) -> nn.Module:
    from .digits import DigitsCNN

    return DigitsCNN()


def _resnet18_cifar(params: dict[str, Any]) -> nn.Module:
    from .resnet_cifar import resnet18_cifar

    return resnet18_cifar()


# plugin -> (builder, how its original code turns a file into a state dict)
_RB, _TORCH = "robustbench", "torch"
_PLUGINS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], str]] = {
    "wrn-28-10": (_wrn_28_10, _RB),        # RobustBench load_model
    "wrn-70-16": (_wrn_70_16, _RB),        # RobustBench load_model
    "resnet-50": (_resnet50, _TORCH),      # torchvision: load_state_dict(torch.load(f))
    "resnet-18-binary": (_resnet18_binary, _TORCH),
    "resnet-18-cifar": (_resnet18_cifar, _TORCH),  # AutoAttack examples/eval.py: the same
    "digits-cnn": (_digits_cnn, _TORCH),   # a retrained bundled CNN (`path` given)
}


def _entry(plugin: str) -> tuple[Callable[[dict[str, Any]], nn.Module], str]:
    if plugin not in _PLUGINS:
        raise KeyError(f"no checkpoint classifier {plugin!r}; one of {', '.join(sorted(_PLUGINS))}")
    return _PLUGINS[plugin]


def build_classifier(plugin: str, params: dict[str, Any]) -> nn.Module:
    """The untrained network `plugin` builds for `params` (e.g. {"classes": 100}), on the
    current default device (`with torch.device("meta"):` allocates nothing)."""
    return _entry(plugin)[0](params)


def read_classifier_state(plugin: str, path: str | Path, expected_sha256: str | None = None
                          ) -> dict[str, torch.Tensor]:
    """The state dict `plugin`'s original loader would hand to its strict load, from `path`
    (RobustBench's unwrapping and prefix stripping for its architectures; for torchvision-
    style files our generic unwrapping, `_metadata` kept). One function for stage and run."""
    obj = read_checkpoint(path, expected_sha256)
    return robustbench_state(obj, path) if _entry(plugin)[1] == _RB else unwrap_state(obj, Path(path))


def load_classifier(plugin: str, params: dict[str, Any]) -> nn.Module:
    """`plugin`'s network with the weights of params["path"], in eval mode, frozen."""
    model = build_classifier(plugin, params)
    state = read_classifier_state(plugin, params["path"], params.get("sha256") or None)
    return load_into(model, state, name=f"{plugin} ({params['path']})").eval().requires_grad_(False)


def _loader(plugin: str) -> Callable[[dict[str, Any]], nn.Module]:
    def load(params: dict[str, Any]) -> nn.Module:
        return load_classifier(plugin, params)

    return load


load_wrn_28_10 = _loader("wrn-28-10")
load_wrn_70_16 = _loader("wrn-70-16")
load_resnet50 = _loader("resnet-50")
load_resnet18_binary = _loader("resnet-18-binary")
load_resnet18_cifar = _loader("resnet-18-cifar")
