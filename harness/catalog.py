"""The asset catalogue (harness/assets/catalog.yaml) and the plan-time asset checks.

Torch-free: `harness plan` and `harness submit` run it on a login node. A grid names a
catalogued asset as `asset:<name>` in any parameter declared to hold one (a data set root,
a checkpoint path, a denoiser); the value stays symbolic in the cell, so moving the asset
directory changes no cell hash. The asset directory comes from `--assets`, the grid's
`assets:`, $HARNESS_ASSETS, or ./assets, in that order.

`harness stage` (harness.staging) verifies the heavy things once — checksums, architecture,
parameter count — and records what it verified in <asset dir>/harness-assets.lock.json.
The checks here are the cheap ones every submission can afford: present, and unchanged
(size and mtime) since a stage that verified it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import AssetError, GridError, UsageError

CATALOG = Path(__file__).resolve().parent / "assets" / "catalog.yaml"
LOCK = "harness-assets.lock.json"
PREFIX = "asset:"
ENV = "HARNESS_ASSETS"
CATALOG_ENV = "HARNESS_CATALOG"
BUNDLED_DENOISERS = ("digits-ddpm",)
KINDS = ("dataset", "classifier", "denoiser")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class Arch:
    name: str
    build: str  # "module:callable", imported only by the stage and the workers
    params: int
    input: tuple[int, ...]
    gflops: float  # forward FLOPs per image at `input`, in units of 1e9
    kwargs: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None  # the classifier plugin that builds it
    plugin_params: dict[str, Any] = field(default_factory=dict)
    denoiser: bool = False


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str
    path: str  # relative to the asset directory
    published: str
    arch: str | None = None
    format: str = "file"  # file | diffusers | dataset
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset files → checksums
    images: dict[str, Any] | None = None  # {under, count}
    md5: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None

    @property
    def pinned(self) -> bool:
        """True when the project knows a published checksum for it."""
        return bool(self.sha256 or self.sha256_prefix or self.md5
                    or any(v for v in self.files.values()))


@dataclass(frozen=True)
class Catalog:
    archs: dict[str, Arch]
    assets: dict[str, Asset]

    def of_kind(self, kind: str) -> list[str]:
        return sorted(n for n, a in self.assets.items() if a.kind == kind)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The catalogue: `path`, else $HARNESS_CATALOG (a site's own, same format), else the bundled one."""
    return _load_catalog(Path(path or os.environ.get(CATALOG_ENV) or CATALOG).absolute())


@lru_cache(maxsize=None)
def _load_catalog(path: Path) -> Catalog:
    try:
        raw = yaml.safe_load(path.read_text())
        return _parse(raw)
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise UsageError(f"{path}: not a valid asset catalogue ({what})") from None


def _parse(raw: dict[str, Any]) -> Catalog:
    archs = {n: Arch(name=n, build=a["build"], params=int(a["params"]), input=tuple(a["input"]),
                     gflops=float(a["gflops"]), kwargs=dict(a.get("kwargs", {})),
                     plugin=a.get("plugin"), plugin_params=dict(a.get("plugin_params", {})),
                     denoiser=bool(a.get("denoiser", False)))
             for n, a in raw["architectures"].items()}
    assets = {}
    for n, a in raw["assets"].items():
        if a["kind"] not in KINDS:
            raise ValueError(f"assets.{n}.kind: {a['kind']!r} not in {KINDS}")
        if a.get("arch") is not None and a["arch"] not in archs:
            raise ValueError(f"assets.{n}.arch: {a['arch']!r} is not an architecture")
        if a["kind"] != "dataset" and a.get("arch") is None:
            raise ValueError(f"assets.{n}.arch: required for a {a['kind']}")
        fmt = a.get("format", "dataset" if a["kind"] == "dataset" else "file")
        assets[n] = Asset(name=n, kind=a["kind"], path=a["path"], published=a["published"],
                          arch=a.get("arch"), format=fmt, files=dict(a.get("files", {}) or {}),
                          images=a.get("images"), md5=a.get("md5"), sha256=a.get("sha256"),
                          sha256_prefix=a.get("sha256_prefix"))
    return Catalog(archs, assets)


# ---------------------------------------------------------------- the asset directory

def assets_dir(cli: str | None = None, grid_value: str | None = None) -> Path:
    """The asset directory: --assets, else the grid's `assets:`, else $HARNESS_ASSETS, else ./assets."""
    chosen = cli or grid_value or os.environ.get(ENV) or "assets"
    return Path(os.path.expanduser(chosen)).absolute()


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def ref_name(value: str) -> str:
    return value[len(PREFIX):]


def check_ref(value: Any, kind: str, file: str, key: str) -> None:
    """Plan-time: `asset:<name>` must name a catalogued asset of the kind the parameter takes."""
    if not is_ref(value):
        return
    cat = load_catalog()
    name = ref_name(value)
    allowed = ", ".join(PREFIX + n for n in cat.of_kind(kind))
    if name not in cat.assets or cat.assets[name].kind != kind:
        raise GridError(file, key, f"{value!r} is not a catalogued {kind}; allowed: {allowed}, "
                                   "or a local path")


def resolve(value: str, root: Path) -> Path:
    """The local path a parameter value stands for (an asset reference or a path)."""
    if is_ref(value):
        return root / load_catalog().assets[ref_name(value)].path
    return Path(os.path.expanduser(value))


def read_lock(root: Path) -> dict[str, Any]:
    path = root / LOCK
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"{path}: unreadable ({exc}); run `harness stage {root}` again") from None
    return data if isinstance(data, dict) else {}


def file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def locked_sha256(value: str, root: Path, relative: str | None = None) -> str | None:
    """The sha256 `harness stage` recorded for this asset's file (or one file of a folder
    asset), None when it was never staged. A loader holds the file to it whatever its mtime:
    changed bytes are refused even when the change came after the submission's checks."""
    if not is_ref(value):
        return None
    entry = read_lock(root).get(ref_name(value))
    if entry is None:
        return None
    if entry.get("status") != "ok":
        raise AssetError(f"{value}: `harness stage` found it bad: {entry.get('detail', '?')}")
    return entry.get("files", {}).get(relative or "", {}).get("sha256")


# ---------------------------------------------------------------- what a grid needs

@dataclass(frozen=True)
class Need:
    """One local asset a grid cell needs: the parameter value and where the grid says it."""

    kind: str
    value: str
    where: str  # e.g. "classifier[1].params.path"


def needs(cells: list[dict[str, Any]]) -> list[Need]:
    """Every local asset the cells name, once each, in grid order (registry-declared params)."""
    from . import registry

    seen: dict[tuple[str, str], Need] = {}
    for cell in cells:
        for plugin_kind in ("dataset", "classifier", "purifier"):
            entry = cell[plugin_kind]
            spec = registry.get(plugin_kind, entry["name"])
            for pname, param in spec.params.items():
                value = entry["params"].get(pname)
                if param.asset and isinstance(value, str) and value and not _bundled(param.asset, value):
                    key = (param.asset, value)
                    seen.setdefault(key, Need(param.asset, value, f"{plugin_kind} {entry['name']!r} "
                                                                   f"params.{pname}"))
    return list(seen.values())


def _bundled(kind: str, value: str) -> bool:
    return kind == "denoiser" and value in BUNDLED_DENOISERS


def check_cells(cells: list[dict[str, Any]], file: str) -> None:
    """Plan-time consistency: a catalogued classifier checkpoint must fit the plugin naming it."""
    cat = load_catalog()
    for i, cell in enumerate(cells):
        entry = cell["classifier"]
        value = entry["params"].get("path")
        if not is_ref(value):
            continue
        arch = cat.archs[cat.assets[ref_name(value)].arch or ""]
        want = {k: v for k, v in arch.plugin_params.items()}
        got = {k: entry["params"].get(k) for k in want}
        if arch.plugin != entry["name"] or got != want:
            need = f"classifier {arch.plugin!r}" + (f" with {want}" if want else "")
            raise GridError(file, "classifier", f"{value} is a {arch.name} checkpoint: it needs "
                                                f"{need}, not {entry['name']!r} with {got or entry['params']}")


def problems(needed: list[Need], root: Path) -> list[str]:
    """Cheap checks for each needed asset: present, verified by `harness stage`, and unchanged since.

    One line per problem, naming the asset, where the grid uses it, the expected path and
    where it is published."""
    cat = load_catalog()
    lock = read_lock(root)
    out = []
    for need in needed:
        path = resolve(need.value, root)
        if not is_ref(need.value):
            if not path.exists():
                out.append(f"{need.value}: missing (the {need.kind} of {need.where}); "
                           f"no such file or directory")
            continue
        name = ref_name(need.value)
        asset = cat.assets[name]
        if not path.exists():
            out.append(f"{need.value}: missing (the {need.kind} of {need.where}); expected at {path}; "
                       f"published: {asset.published}")
            continue
        entry = lock.get(name)
        if entry is None:
            out.append(f"{need.value}: present but not verified yet: run `harness stage {root}` "
                       "(checks checksums and architecture once, records the sha256)")
            continue
        if entry.get("status") != "ok":
            out.append(f"{need.value}: `harness stage` found it bad: {entry.get('detail', '?')}")
            continue
        changed = [rel or "." for rel, rec in entry.get("files", {}).items()
                   if not (path / rel if rel else path).is_file()
                   or file_stamp(path / rel if rel else path) != {k: rec[k] for k in ("size", "mtime_ns")}]
        if changed:
            out.append(f"{need.value}: changed since `harness stage` verified it ({', '.join(changed)}); "
                       f"run `harness stage {root}` again")
    return out


def require(needed: list[Need], root: Path) -> None:
    """UsageError (exit 2) naming every missing or mismatched asset; nothing is submitted."""
    bad = problems(needed, root)
    if bad:
        raise UsageError(f"{len(bad)} asset problem(s) under {root} (set it with --assets, the grid's "
                         "`assets:` or $HARNESS_ASSETS; check it with `harness stage`):\n  "
                         + "\n  ".join(bad))


# ---------------------------------------------------------------- cost

def arch_of(kind: str, value: Any) -> Arch | None:
    """The architecture a denoiser or classifier parameter value stands for, if known."""
    cat = load_catalog()
    if not isinstance(value, str):
        return None
    if kind == "denoiser" and value in BUNDLED_DENOISERS:
        return cat.archs.get(value)
    if is_ref(value):
        asset = cat.assets.get(ref_name(value))
        return cat.archs.get(asset.arch or "") if asset else None
    return None


def classifier_arch(entry: dict[str, Any]) -> Arch | None:
    """The architecture a classifier entry builds: the plugin's, the most specific match of its
    parameters (e.g. wrn-28-10 with classes 100 → wrn-28-10-c100)."""
    fits = [a for a in load_catalog().archs.values() if a.plugin == entry["name"]
            and all(entry["params"].get(k) == v for k, v in a.plugin_params.items())]
    return max(fits, key=lambda a: len(a.plugin_params), default=None)


# ---------------------------------------------------------------- load time (workers)

def _published(value: str) -> str:
    return f"; published: {load_catalog().assets[ref_name(value)].published}" if is_ref(value) else ""


def expected_sha256(value: str, root: Path, relative: str | None = None) -> str | None:
    """The sha256 a loader must insist on for an asset's file: the catalogue's pin, else what
    `harness stage` verified; a published sha256 prefix is checked here, by hashing."""
    if not is_ref(value):
        return None
    asset = load_catalog().assets[ref_name(value)]
    if asset.sha256 and not relative:
        return asset.sha256
    got = locked_sha256(value, root, relative)
    if asset.sha256_prefix and not relative:
        from .fsutil import file_digest

        got = got or file_digest(resolve(value, root), "sha256")
        if not got.startswith(asset.sha256_prefix):
            raise AssetError(f"{value}: sha256 {got} does not start with the published "
                             f"{asset.sha256_prefix}; the file is corrupt or another one")
    return got


def verify_dataset_files(value: str, root: Path) -> None:
    """Check a data set asset's listed files against their published checksums (they are small)."""
    if not is_ref(value):
        return
    from .fsutil import file_digest

    asset = load_catalog().assets[ref_name(value)]
    base = resolve(value, root)
    for rel, sums in asset.files.items():
        path = base / rel
        if not path.is_file():
            raise AssetError(f"{value}: {path} is missing{_published(value)}")
        for algo in ("md5", "sha256"):
            if sums.get(algo) and file_digest(path, algo) != sums[algo]:
                raise AssetError(f"{value}: {path}: {algo} does not match the published "
                                 f"{sums[algo]}; the file is corrupt or another version")


def resolve_params(spec: Any, params: dict[str, Any], root: Path) -> dict[str, Any]:
    """A plugin's parameters with asset values replaced by local paths (and the checkpoint's
    expected sha256 filled in from the catalogue or the stage record). AssetError if missing."""
    out = dict(params)
    for pname, param in spec.params.items():
        value = params.get(pname)
        if not param.asset or not isinstance(value, str) or not value or _bundled(param.asset, value):
            continue
        path = resolve(value, root)
        if not path.exists():
            raise AssetError(f"{value}: missing, expected at {path}{_published(value)}")
        out[pname] = str(path)
        if param.asset == "dataset":
            verify_dataset_files(value, root)
        if "sha256" in spec.params and not params.get("sha256"):
            out["sha256"] = expected_sha256(value, root) or ""
    return out
