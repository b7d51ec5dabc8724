"""Load local checkpoints safely: safetensors, or torch.load with weights_only=True.

No checkpoint is ever unpickled into arbitrary objects: a `.pt`/`.pth` holding anything but
tensors and plain containers is refused with AssetError. When an expected sha256 is given
the file is refused unless it matches (checked before anything is parsed).
RobustBench-style wrappers are undone: a dict holding the weights under "state_dict" or
"model_state_dict" is unwrapped, and a "module." prefix (DataParallel) is stripped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AssetError
from .bundled import sha256

WRAPPER_KEYS = ("state_dict", "model_state_dict")
PREFIX = "module."
_SHOW = 5  # how many keys an error message lists


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(len(WRAPPER_KEYS) + 1):  # nested wrappers, bounded
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise AssetError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise AssetError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        key = str(k)
        while key.startswith(PREFIX):
            key = key[len(PREFIX):]
        if key in out:
            raise AssetError(f"{path}: key {key!r} appears twice once {PREFIX!r} is stripped")
        out[key] = v
    return out


def read_checkpoint(path: str | Path, expected_sha256: str | None = None) -> Any:
    """The object a `.safetensors`, `.pt`, `.pth` or `.bin` file holds, checksum first, never
    unpickling anything but tensors and plain containers; AssetError if refused."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: missing checkpoint")
    if expected_sha256 is not None:
        got = sha256(path)
        if got.lower() != expected_sha256.strip().lower():
            raise AssetError(f"{path}: sha256 mismatch: expected {expected_sha256}, got {got}; "
                             "the file is corrupt or was replaced")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad asset
            raise AssetError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix not in (".pt", ".pth", ".bin"):
        raise AssetError(f"{path}: unknown checkpoint type {suffix!r} (want .safetensors, .pt, .pth or .bin)")
    try:
        try:  # memory-mapped: a 2 GB backbone is not read twice into memory
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as e:  # noqa: BLE001 - UnpicklingError for refused globals, or corrupt
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(f"{path}: refused: not a plain tensor checkpoint (loaded with "
                         f"weights_only=True; arbitrary objects are never unpickled): {first}") from e


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A CPU state dict from a checkpoint file (RobustBench wrappers and `module.` undone)."""
    return _unwrap(read_checkpoint(path, expected_sha256), Path(path))


def target_module(model: nn.Module) -> nn.Module:
    """The module whose state dict a checkpoint holds (the network inside a Normalized wrapper)."""
    from .resnet import Normalized

    return model.net if isinstance(model, Normalized) else model


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def fit_problems(own: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]]) -> str | None:
    """How a checkpoint's {key: shape} fails to fit a model's, or None when it fits exactly."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {given[k]} vs {own[k]}" for k in own if k in given and given[k] != own[k]]
    parts = [f"{label} {len(keys)}: {_few(keys)}"
             for label, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("wrong shape (checkpoint vs model)", shapes)) if keys]
    return "; ".join(parts) or None


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], name: str = "checkpoint") -> nn.Module:
    """Strictly load `state_dict` into `model` (into `.net` for a `Normalized` wrapper).

    Refuses with AssetError listing the first few missing, unexpected and wrong-shaped keys."""
    target = target_module(model)
    problem = fit_problems(shapes_of(target.state_dict()), shapes_of(state_dict))
    if problem:
        raise AssetError(f"{name} does not fit {type(target).__name__}: {problem}")
    target.load_state_dict(state_dict, strict=True)
    return model
