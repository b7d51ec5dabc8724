"""`harness stage <asset dir>`: check a local asset directory against the catalogue.

For each catalogued asset: present where the catalogue says; published checksums match;
a checkpoint's keys and shapes fit its architecture exactly and its parameter count is the
published one (the model is built on the meta device, so a 552 M backbone costs nothing);
an image folder holds the expected number of images. What verified is recorded, with each
file's size, mtime and sha256, in <asset dir>/harness-assets.lock.json: later submissions
check it cheaply, and unpinned checkpoints are held to the sha256 recorded here.
Nothing is ever downloaded: the report says where each missing asset is published.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .catalog import (IMAGE_SUFFIXES, LOCK, Arch, Asset, Catalog, file_problem, file_stamp,
                      load_catalog, read_lock)
from .errors import AssetError
from .fsutil import atomic_write, file_digest


@dataclass
class Result:
    name: str
    status: str  # ok | missing | bad
    detail: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: int | None = None


def build_on_meta(arch: Arch) -> Any:
    """The architecture, built without memory (parameters on the meta device)."""
    import torch

    module, _, attr = arch.build.partition(":")
    make = getattr(importlib.import_module(module), attr)
    # A builder with its own `device` argument would override the surrounding context.
    extra = {"device": "meta"} if "device" in inspect.signature(make).parameters else {}
    with torch.device("meta"):
        return make(**arch.kwargs, **extra)


def count_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _record(path: Path) -> dict[str, Any]:
    return {**file_stamp(path), "sha256": file_digest(path, "sha256")}


def read_state(weights: Path, fmt: str) -> dict[str, Any]:
    """The state dict a weights file holds, read the way its loader reads it (never unpickling objects)."""
    if fmt == "score-sde":
        from .models.score_sde import load_score_sde_checkpoint

        return load_score_sde_checkpoint(weights)
    from .models.checkpoints import load_checkpoint

    return load_checkpoint(weights)


def _check_fit(model: Any, weights: Path, arch: Arch, fmt: str) -> tuple[int, str | None]:
    """(parameter count, problem or None) for a weights file against an architecture."""
    from .models.checkpoints import fit_problems, shapes_of, target_module

    n = count_params(model)
    if n != arch.params:
        return n, f"the architecture has {n:,} parameters, not the published {arch.params:,}"
    try:
        state = read_state(weights, fmt)
    except AssetError as exc:
        return n, str(exc)
    problem = fit_problems(shapes_of(target_module(model).state_dict()), shapes_of(state))
    return n, (f"{weights.name} does not fit {arch.name}: {problem}" if problem else None)


def _checksums(asset: Asset, rel: str, rec: dict[str, Any], path: Path) -> str | None:
    """The published checksums of one file of the asset ("" = the asset's own file), checked."""
    sums = asset.files.get(rel, {}) if rel else {
        "sha256": asset.sha256, "md5": asset.md5, "sha256_prefix": asset.sha256_prefix}
    return file_problem(path, sums, rec["sha256"])


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_asset(asset: Asset, root: Path, catalog: Catalog) -> Result:
    path = root / asset.path
    if not path.exists():
        return Result(asset.name, "missing", f"expected at {path}; published: {asset.published}")
    res = Result(asset.name, "ok")
    arch = catalog.archs.get(asset.arch or "")
    try:
        if asset.kind == "dataset":
            for rel, spec in asset.files.items():
                f = path / rel
                if not f.is_file():
                    if spec.get("optional"):
                        continue
                    return Result(asset.name, "bad", f"{f} is missing; published: {asset.published}")
                res.files[rel] = _record(f)
                bad = _checksums(asset, rel, res.files[rel], f)
                if bad:
                    return Result(asset.name, "bad", bad)
            if asset.images:
                n = _count_images(path / asset.images["under"])
                if n != asset.images["count"]:
                    return Result(asset.name, "bad", f"{path / asset.images['under']}: {n} images, "
                                                     f"expected {asset.images['count']}")
            return res
        if asset.format == "diffusers":
            from .models.denoisers import (build_unet, check_schedule, read_unet_config, unet_folder,
                                           weights_file)

            check_schedule(path)  # what every load refuses, stage refuses
            folder = unet_folder(path)
            weights = weights_file(folder)
            import torch

            with torch.device("meta"):
                model = build_unet(read_unet_config(folder))
            for f in (folder / "config.json", weights):
                res.files[str(f.relative_to(path))] = _record(f)
        else:
            if not path.is_file():
                return Result(asset.name, "bad", f"{path} is not a file")
            model, weights = build_on_meta(arch), path
            res.files[""] = _record(path)
            bad = _checksums(asset, "", res.files[""], path)
            if bad:
                return Result(asset.name, "bad", bad)
        res.params, problem = _check_fit(model, weights, arch, asset.format)
        if problem:
            return Result(asset.name, "bad", problem, params=res.params)
        res.detail = f"{arch.name}, {res.params:,} parameters" + ("" if asset.pinned else
                                                                  ", unpinned: sha256 recorded")
    except AssetError as exc:
        return Result(asset.name, "bad", str(exc))
    return res


def stage(root: Path, names: list[str] | None = None, catalog: Catalog | None = None,
          out: Callable[[str], None] = print) -> list[Result]:
    """Check `names` (default: every catalogued asset) under root; update the lock; report."""
    import fcntl

    catalog = catalog or load_catalog()
    names = list(catalog.assets) if names is None else names
    unknown = sorted(set(names) - set(catalog.assets))
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(unknown)}; catalogued: {', '.join(sorted(catalog.assets))}")
    if not root.is_dir():
        raise AssetError(f"{root}: no such asset directory")
    # One stage at a time per directory: two concurrent runs would each drop the other's records.
    with open(root / f".{LOCK}.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            lock = read_lock(root)
        except AssetError as exc:  # the record is rebuilt from what this run verifies
            out(f"warning: {exc}; starting a new record")
            lock = {}
        results = []
        for name in names:
            r = check_asset(catalog.assets[name], root, catalog)
            results.append(r)
            out(f"{r.status:<8} {name:<30} {r.detail}")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for r in results:
            if r.status == "missing":
                lock.pop(r.name, None)
            else:
                lock[r.name] = {"status": r.status, "detail": r.detail, "files": r.files,
                                "params": r.params, "staged": now}
        atomic_write(root / LOCK, json.dumps(lock, indent=1, sort_keys=True) + "\n")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "missing", "bad")}
    out(f"{counts['ok']} ok, {counts['missing']} missing, {counts['bad']} bad; recorded in {root / LOCK}")
    return results
