"""Noise predictors for the purifier: the bundled digits DDPM, any local diffusers UNet2DModel
folder, and catalogued backbones (OpenAI's guided-diffusion 256 unconditional model, DiffPure's
Score-SDE CIFAR-10 model).

Every backbone becomes the purifier's call (x_t in [-1,1], integer t) → ε̂. The purifier's
schedule is DDPM's linear β from 1e-4 to 0.02 over T=1000, which all of these were trained
with; a diffusers folder whose scheduler_config.json says otherwise is refused rather than
purified with the wrong ᾱ.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..catalog import BUNDLED_DENOISERS, expected_sha256, is_ref, load_catalog, ref_name, resolve
from ..errors import AssetError
from .checkpoints import load_checkpoint, load_into

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LINEAR_1000 = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}


def unet_folder(path: Path) -> Path:
    """The folder holding the UNet's config.json: the folder itself, or a pipeline's unet/."""
    for cand in (path, path / "unet"):
        if (cand / "config.json").is_file():
            return cand
    raise AssetError(f"{path}: not a diffusers UNet2DModel folder (no config.json here or in unet/)")


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise AssetError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def read_unet_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise AssetError(f"{folder / 'config.json'}: a {config['_class_name']}, not a UNet2DModel")
    return config


def check_schedule(path: Path) -> None:
    """Refuse a backbone trained with another noise schedule than the purifier's."""
    for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json",
                 path.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            sched = json.loads(cand.read_text())
            bad = {k: sched.get(k) for k, v in LINEAR_1000.items() if k in sched and sched[k] != v}
            if bad:
                raise AssetError(f"{cand}: {bad}; the purifier's schedule is {LINEAR_1000}")
            return


def build_unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def load_diffusers(path: Path, sha256: str | None = None) -> nn.Module:
    """A UNet2DModel built from the folder's config.json, its weights loaded strictly and safely
    (safetensors, or the .bin through torch.load(weights_only=True))."""
    from .digits import UNetEps

    folder = unet_folder(path)
    check_schedule(path)
    model = build_unet(read_unet_config(folder))
    state = load_checkpoint(weights_file(folder), sha256)
    return UNetEps(load_into(model, state, name=f"diffusers UNet ({folder})"))


def load_guided(path: Path, sha256: str | None = None, config: Any = None) -> nn.Module:
    """OpenAI's guided-diffusion UNet (default: the 256×256 unconditional configuration) with
    the original checkpoint's state dict, as the purifier's ε̂ predictor."""
    from .guided_unet import GUIDED_256_UNCOND, GuidedEps, guided_unet

    model = guided_unet(config or GUIDED_256_UNCOND)
    return GuidedEps(load_into(model, load_checkpoint(path, sha256), name=f"guided-diffusion ({path})"))


def load_score_sde(path: Path, sha256: str | None = None, config: Any = None) -> nn.Module:
    """DiffPure's CIFAR-10 Score-SDE model (DDPM++ deep, continuous VP), EMA weights, as ε̂."""
    from .score_sde import SCORE_SDE_CIFAR10, ScoreSdeEps, load_score_sde_checkpoint, score_sde_cifar10

    state = load_score_sde_checkpoint(path, sha256)
    model = score_sde_cifar10(config=config or SCORE_SDE_CIFAR10)
    return ScoreSdeEps(load_into(model, state, name=f"score-sde ({path})"))


def load_denoiser(value: str, root: Path, pinned: dict[str, dict[str, str]] | None = None) -> nn.Module:
    """The noise predictor a purifier's `denoiser` parameter names, in eval mode, frozen; a
    catalogued one is held to the sha256 the plan (`pinned`) or `harness stage` recorded."""
    if value in BUNDLED_DENOISERS:
        from .bundled import load_denoiser as bundled

        return bundled(value)
    path = resolve(value, root)
    if not path.exists():
        raise AssetError(f"{value}: missing, expected at {path}")
    if is_ref(value):
        asset = load_catalog().assets[ref_name(value)]
        if asset.format == "diffusers":
            rel = str(weights_file(unet_folder(path)).relative_to(path))
            model = load_diffusers(path, expected_sha256(value, root, rel, pinned))
        elif asset.format == "score-sde":
            model = load_score_sde(path, expected_sha256(value, root, "", pinned))
        elif asset.arch == "guided-256-uncond":
            model = load_guided(path, expected_sha256(value, root, "", pinned))
        else:
            raise AssetError(f"{value}: no loader for architecture {asset.arch!r}")
    elif path.is_dir():
        model = load_diffusers(path)
    else:
        raise AssetError(f"{value}: a denoiser path must be a diffusers UNet2DModel folder "
                         "(config.json + weights); for guided-diffusion use "
                         "asset:guided-diffusion-256-uncond")
    return model.eval().requires_grad_(False)
