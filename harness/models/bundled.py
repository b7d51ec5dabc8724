"""Load the bundled digits models from safetensors, checking their sha256 first."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import AssetError
from ..fsutil import file_digest

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MANIFEST = ASSETS / "MANIFEST.json"


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def verified_state_dict(path: Path, expected_sha256: str) -> dict[str, Any]:
    """A safetensors state dict, refused unless its sha256 matches (no unpickling)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise AssetError(f"{path}: missing; rebuild the bundled models with `harness train`")
    got = sha256(path)
    if got != expected_sha256:
        raise AssetError(f"{path}: sha256 {got} does not match the expected {expected_sha256}; "
                         "the file is corrupt or was replaced")
    return load_file(str(path))


def _manifest_entry(name: str) -> dict[str, Any]:
    if not MANIFEST.is_file():
        raise AssetError(f"{MANIFEST}: missing; rebuild the bundled models with `harness train`")
    entries = json.loads(MANIFEST.read_text())
    if name not in entries:
        raise AssetError(f"{MANIFEST}: no entry {name!r}")
    return entries[name]


def _load(name: str, model: nn.Module) -> nn.Module:
    entry = _manifest_entry(name)
    model.load_state_dict(verified_state_dict(ASSETS / entry["file"], entry["sha256"]), strict=True)
    return model.eval().requires_grad_(False)


def load_classifier(params: dict[str, Any]) -> nn.Module:
    """The bundled digits CNN, or the same network with the weights of params["path"]."""
    from .digits import DigitsCNN

    if params.get("path"):
        from .zoo import load_classifier as from_checkpoint

        return from_checkpoint("digits-cnn", params)
    return _load("digits-cnn", DigitsCNN())


def load_denoiser(name: str) -> nn.Module:
    from .digits import UNetEps, make_unet

    if name != "digits-ddpm":
        raise AssetError(f"unknown denoiser {name!r}")
    return UNetEps(_load("digits-ddpm", make_unet()))
