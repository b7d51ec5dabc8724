"""Classifier plugins backed by local checkpoints: the architecture, then the user's file,
checksum-verified and loaded strictly (no unpickling of arbitrary objects)."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .checkpoints import load_checkpoint, load_into


def _from_checkpoint(make: Callable[[dict[str, Any]], nn.Module], name: str) -> Callable[[dict[str, Any]], nn.Module]:
    def load(params: dict[str, Any]) -> nn.Module:
        model = make(params)
        state = load_checkpoint(params["path"], params["sha256"] or None)
        return load_into(model, state, name=f"{name} ({params['path']})").eval().requires_grad_(False)

    return load


def _wrn_28_10(params: dict[str, Any]) -> nn.Module:
    from .wideresnet import wrn_28_10

    return wrn_28_10(num_classes=params.get("classes", 10))


def _wrn_70_16(params: dict[str, Any]) -> nn.Module:
    from .dm_wideresnet import wrn_70_16_dm

    classes = params.get("classes", 10)
    return wrn_70_16_dm(num_classes=classes, dataset="cifar100" if classes == 100 else "cifar10")


def _resnet50(params: dict[str, Any]) -> nn.Module:
    from .resnet import resnet50

    return resnet50()


def _resnet18_binary(params: dict[str, Any]) -> nn.Module:
    from .resnet import resnet18_binary

    return resnet18_binary()


load_wrn_28_10 = _from_checkpoint(_wrn_28_10, "wrn-28-10")
load_wrn_70_16 = _from_checkpoint(_wrn_70_16, "wrn-70-16")
load_resnet50 = _from_checkpoint(_resnet50, "resnet-50")
load_resnet18_binary = _from_checkpoint(_resnet18_binary, "resnet-18-binary")
