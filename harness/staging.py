"""`harness stage <asset dir>`: check a local asset directory against the catalogue.

For each catalogued asset: present where the catalogue says; published checksums match;
the checkpoint loads through the very function the run loads it with (a classifier: its
plugin's network and strict load, `zoo.build_classifier` + `checkpoints.fit_problem`; a
backbone: `denoisers.load_catalogued`), built on the meta device where the format allows, so
a 552 M backbone costs no memory, and its parameter count is the published one; an image
folder holds the expected number of images. What verified is recorded, with each
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
from .errors import AssetError, UsageError
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


def _record_files(res: Result, path: Path, rels: list[str]) -> None:
    for rel in rels:  # rel "" is the single-file asset itself (path / "" is path)
        res.files[rel] = _record(path / rel)


def check_classifier(arch: Arch, path: Path, sha256: str | None = None) -> Any:
    """The classifier network the run builds for this architecture (its plugin, the plugin's
    resolved parameters), on the meta device, holding the file's state exactly as the run's
    strict load would; AssetError otherwise."""
    import torch

    from . import registry
    from .models.checkpoints import fit_problem
    from .models.zoo import build_classifier, read_classifier_state

    if arch.plugin is None:
        raise AssetError(f"architecture {arch.name} names no classifier plugin to build it")
    # the parameters a grid cell naming this checkpoint resolves to (catalog.check_cells holds
    # a cell to the architecture's plugin_params), so the network is the run's own
    params = registry.get("classifier", arch.plugin).resolve(
        {**arch.plugin_params, "path": str(path)}, "<catalogue>", f"architectures.{arch.name}")
    with torch.device("meta"):
        try:
            model = build_classifier(arch.plugin, params)
        except KeyError as exc:  # a plugin that takes no checkpoint file
            raise AssetError(f"architecture {arch.name}: {exc.args[0]}") from None
    n = count_params(model)
    if n != arch.params:
        raise AssetError(f"{arch.plugin} builds {n:,} parameters, not the published {arch.params:,} "
                         f"of {arch.name}")
    problem = fit_problem(model, read_classifier_state(arch.plugin, path, sha256))
    if problem:
        raise AssetError(f"{path.name} does not fit {arch.name}: {problem}")
    return model


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
        from .models.denoisers import files_of, load_catalogued

        arch = catalog.archs[asset.arch or ""]
        rels = files_of(asset, path) if asset.kind == "denoiser" else [""]
        if rels == [""] and not path.is_file():
            return Result(asset.name, "bad", f"{path} is not a file")
        _record_files(res, path, rels)
        if "" in res.files:
            bad = _checksums(asset, "", res.files[""], path)
            if bad:
                return Result(asset.name, "bad", bad)
        # Through the run's own loader, each file held to the sha256 just recorded (so what is
        # recorded is what was checked); single-file models built on the meta device.
        sha = {rel: rec["sha256"] for rel, rec in res.files.items()}
        if asset.kind == "denoiser":
            model = load_catalogued(asset, arch, path, sha.get, meta=True)
        else:
            model = check_classifier(arch, path, sha[""])
        res.params = count_params(model)
        res.detail = f"{arch.name}, {res.params:,} parameters" + ("" if asset.pinned else
                                                                  ", unpinned: sha256 recorded")
    except UsageError as exc:  # AssetError, or a GridError from a catalogued plugin's parameters
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
