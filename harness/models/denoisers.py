"""Noise predictors for the purifier: the bundled digits DDPM, any local diffusers UNet2DModel
folder, and catalogued backbones (OpenAI's guided-diffusion 256 unconditional model, DiffPure's
Score-SDE CIFAR-10 model).

Every backbone becomes the purifier's call (x_t in [-1,1], integer t) → ε̂. The purifier's
schedule is DDPM's linear β from 1e-4 to 0.02 over T=1000, which all of these were trained
with; a diffusers folder whose scheduler_config.json says otherwise is refused rather than
purified with the wrong ᾱ.

`load_catalogued` is the one loader of a catalogued backbone: `harness stage` runs it (building
single-file backbones on the meta device) and the run runs it, so "staged ok" means "loads".
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from torch import nn

from ..catalog import BUNDLED_DENOISERS, expected_sha256, file_problem, is_ref, load_catalog, ref_name, resolve
from ..errors import AssetError
from .checkpoints import fit_problem, load_checkpoint, load_into, read_checkpoint

if TYPE_CHECKING:
    from ..catalog import Arch, Asset

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LINEAR_1000 = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}
Sha = Callable[[str], "str | None"]  # a file of the asset (relative path, "" = the file itself) → its sha256


def unet_folder(path: Path) -> Path:
    """The folder holding the UNet's config.json: the folder itself, or a pipeline's unet/."""
    for cand in (path, path / "unet"):
        if (cand / "config.json").is_file():
            return cand
    raise AssetError(f"{path}: not a diffusers UNet2DModel folder (no config.json here or in unet/)")


def weights_file(folder: Path) -> Path:
    """The single weights file diffusers would read (safetensors first, as it prefers them)."""
    shards = sorted(p.name for p in folder.glob("diffusion_pytorch_model*.index.json"))
    if shards:  # diffusers would read the shards, which no single sha256 pins
        raise AssetError(f"{folder}: sharded weights ({', '.join(shards)}) are not supported; "
                         f"save the model as one {' or '.join(WEIGHT_FILES)}")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise AssetError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")


def read_unet_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise AssetError(f"{folder / 'config.json'}: not JSON ({exc})") from exc
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


def _cause(exc: BaseException) -> str:
    """Every message along an exception's chain, on one line: the whole reason, not its first line."""
    seen: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(seen) < 8:
        msg = " ".join(str(e).split()) or type(e).__name__
        if msg not in seen:
            seen.append(msg)
        e = e.__cause__ or e.__context__
    return ": ".join(seen)


def _hold(path: Path, sha256: str | None) -> None:
    bad = file_problem(path, {"sha256": sha256}) if sha256 else None
    if bad:
        raise AssetError(f"{bad}; the file is corrupt or was replaced since it was verified")


@contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the call (besides local_files_only: nothing may reach the hub), and
    diffusers' key warnings ("newly initialized ... TRAIN this model") silenced: we refuse
    such a load ourselves, naming the keys."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # set first: huggingface_hub reads it once, when imported
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_count(model: nn.Module, params: int | None, what: str) -> None:
    if params is not None and _count(model) != params:
        raise AssetError(f"{what} has {_count(model):,} parameters, not the catalogued {params:,}")


def load_diffusers(path: Path, sha256: str | None = None, params: int | None = None,
                   config_sha256: str | None = None) -> nn.Module:
    """A UNet2DModel folder loaded by diffusers' own `from_pretrained` (offline), so its conversion
    of older key names (`query`/`key`/`value`/`proj_attn` of 0.0.x-era files) applies, inside our
    checks: the noise schedule, the files' sha256 (before anything is read), strictness (no key
    missing or unexpected after the conversion) and, if given, the catalogued parameter count."""
    from .digits import UNetEps

    path = Path(path)
    folder = unet_folder(path)
    check_schedule(path)
    read_unet_config(folder)
    weights = weights_file(folder)
    _hold(folder / "config.json", config_sha256)
    if weights.suffix == ".bin":
        # diffusers 0.42 reads .bin with weights_only=True too, but older releases pyproject
        # allows may not: our own safe read (sha256 first) refuses a pickle before diffusers sees it.
        read_checkpoint(weights, sha256)
    else:
        _hold(weights, sha256)  # safetensors cannot run code; only the bytes need holding
    unet = _from_pretrained(folder, weights)
    _check_count(unet, params, f"diffusers UNet ({folder})")
    return UNetEps(unet)


def _from_pretrained(folder: Path, weights: Path) -> nn.Module:
    try:
        with _offline_and_quiet():
            from diffusers import UNet2DModel

            unet, info = UNet2DModel.from_pretrained(
                str(folder.absolute()), local_files_only=True, output_loading_info=True,
                use_safetensors=weights.suffix == ".safetensors",  # exactly the file we hashed
                low_cpu_mem_usage=False,  # accelerate is no dependency; keys are checked below
                # else the parameters stay backed by the file's memory map: a file rewritten in
                # place would change the weights mid-run, after their sha256 was checked
                disable_mmap=True)
    except Exception as exc:  # noqa: BLE001 - shape mismatch, unreadable file: a bad asset
        raise AssetError(f"{weights}: diffusers could not load it: {_cause(exc)}") from exc
    bad = [f"{label} {len(keys)}: {', '.join(sorted(map(str, keys)))}"
           for label, keys in (("missing", info["missing_keys"]), ("unexpected", info["unexpected_keys"]),
                               ("wrong shape", [k[0] for k in info["mismatched_keys"]])) if keys]
    if bad:
        raise AssetError(f"{weights} does not fit the UNet2DModel of {folder / 'config.json'} (after "
                         f"diffusers' conversion of older key names): {'; '.join(bad)}")
    return unet


def _strict(make: Callable[[str], nn.Module], state: dict[str, Any], name: str, meta: bool) -> nn.Module:
    """`make`'s network holding `state` exactly. On meta (the stage: no memory) only the check
    `load_into` makes, which `fit_problem` answers identically; else `load_into` itself."""
    if not meta:
        return load_into(make("cpu"), state, name=name)
    model = make("meta")
    problem = fit_problem(model, state)
    if problem:
        raise AssetError(f"{name} does not fit {type(model).__name__}: {problem}")
    return model


def load_guided(path: Path, sha256: str | None = None, config: Any = None, meta: bool = False) -> nn.Module:
    """OpenAI's guided-diffusion UNet (default: the 256×256 unconditional configuration) with
    the original checkpoint's state dict, as the purifier's ε̂ predictor."""
    from .guided_unet import GUIDED_256_UNCOND, GuidedEps, guided_unet

    state = load_checkpoint(path, sha256)
    net = _strict(lambda dev: guided_unet(config or GUIDED_256_UNCOND, device=dev), state,
                  f"guided-diffusion ({path})", meta)
    return GuidedEps(net)


def load_score_sde(path: Path, sha256: str | None = None, config: Any = None, meta: bool = False) -> nn.Module:
    """DiffPure's CIFAR-10 Score-SDE model (DDPM++ deep, continuous VP), EMA weights, as ε̂."""
    from .score_sde import SCORE_SDE_CIFAR10, ScoreSdeEps, load_score_sde_checkpoint, score_sde_cifar10

    state = load_score_sde_checkpoint(path, sha256)
    net = _strict(lambda dev: score_sde_cifar10(device=dev, config=config or SCORE_SDE_CIFAR10), state,
                  f"score-sde ({path})", meta)
    return ScoreSdeEps(net)


def files_of(asset: Asset, path: Path) -> list[str]:
    """The files of a catalogued backbone its loader reads and holds, relative to its path
    ("" = the asset is that one file): what `harness stage` records."""
    if asset.format == "diffusers":
        folder = unet_folder(path)
        return [str((folder / "config.json").relative_to(path)), str(weights_file(folder).relative_to(path))]
    return [""]


def load_catalogued(asset: Asset, arch: Arch, path: Path, sha: Sha = lambda rel: None,
                    meta: bool = False) -> nn.Module:
    """The ε̂ predictor of a catalogued backbone at `path`, each file held to `sha(rel)`, with the
    catalogued parameter count. `meta=True` (the stage) builds single-file backbones on the meta
    device and checks their keys as the real load would; a diffusers folder is always loaded for
    real, since diffusers' own loader (with its key conversion) is the check."""
    if asset.format == "diffusers":
        config, weights = files_of(asset, path)
        return load_diffusers(path, sha(weights), arch.params, sha(config))
    if not path.is_file():
        raise AssetError(f"{path} is not a file")
    if asset.format == "score-sde":
        model = load_score_sde(path, sha(""), meta=meta)
    elif arch.name == "guided-256-uncond":
        model = load_guided(path, sha(""), meta=meta)
    else:
        raise AssetError(f"asset:{asset.name}: no loader for architecture {arch.name!r} "
                         f"(format {asset.format!r})")
    _check_count(model, arch.params, f"asset:{asset.name} ({arch.name})")
    return model


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
        cat = load_catalog()
        asset = cat.assets[ref_name(value)]
        model = load_catalogued(asset, cat.archs[asset.arch or ""], path,
                                lambda rel: expected_sha256(value, root, rel, pinned))
    elif path.is_dir():
        model = load_diffusers(path)
    else:
        raise AssetError(f"{value}: a denoiser path must be a diffusers UNet2DModel folder "
                         "(config.json + weights); for guided-diffusion use "
                         "asset:guided-diffusion-256-uncond")
    return model.eval().requires_grad_(False)
