"""The asset catalogue (harness/assets/catalog.yaml) and the plan-time asset checks.

Torch-free: `harness plan` and `harness submit` run it on a login node. A grid names a
catalogued asset as `asset:<name>` in any parameter declared to hold one (a data set root,
a checkpoint path, a denoiser); the value stays symbolic in the cell, so moving the asset
directory changes no cell hash. The asset directory comes from `--assets`, the grid's
`assets:`, $HARNESS_ASSETS, or ./assets, in that order.

`harness stage` (harness.staging) verifies the heavy things once — checksums, architecture,
parameter count — and records what it verified in <asset dir>/harness-assets.lock.json.
Every catalogued asset must have been verified so before it is used. The checks here are
the cheap ones every submission can afford: present, verified, and unchanged (size and
mtime) since. The plan carries the sha256 each file had when it was planned, the workers
hold the files to it, and every result row records it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import registry
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
    plugin: str | None = None  # a data set asset: the dataset plugin that reads its layout

    @property
    def pinned(self) -> bool:
        """True when the project knows a published checksum for it."""
        return bool(self.sha256 or self.sha256_prefix or self.md5
                    or any(v.get("md5") or v.get("sha256") or v.get("sha256_prefix")
                           for v in self.files.values()))


@dataclass(frozen=True)
class Catalog:
    archs: dict[str, Arch]
    assets: dict[str, Asset]

    def of_kind(self, kind: str) -> list[str]:
        return sorted(n for n, a in self.assets.items() if a.kind == kind)


def load_catalog() -> Catalog:
    """The bundled catalogue, with a site's own ($HARNESS_CATALOG, same format) merged over it:
    the site's architectures and assets are added, or replace bundled ones of the same name."""
    site = os.environ.get(CATALOG_ENV)
    return _load_catalog(CATALOG, Path(site).absolute() if site else None)


# Every key a catalogue may hold: a misspelt one (`sha265:`) would otherwise leave an asset
# silently unpinned, so anything else is refused.
TOP_KEYS = ("architectures", "assets")
ARCH_KEYS = ("build", "params", "input", "gflops", "kwargs", "plugin", "plugin_params", "denoiser")
ASSET_KEYS = ("kind", "path", "published", "arch", "format", "files", "images", "md5", "sha256",
              "sha256_prefix", "plugin")
FILE_KEYS = ("md5", "sha256", "sha256_prefix", "optional")
IMAGES_KEYS = ("under", "count")
FORMATS = ("file", "diffusers", "score-sde", "dataset")


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{path}: {where}: a mapping is expected, not {type(value).__name__} {value!r}")
    return value


def _keys(path: Path, where: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """`value` as a mapping holding only `allowed` keys; UsageError naming file, entry and key."""
    value = _mapping(path, where, value)
    unknown = [str(k) for k in value if k not in allowed]
    if unknown:
        raise UsageError(f"{path}: {where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")
    return value


def check_keys(raw: Any, path: Path) -> dict[str, Any]:
    """One catalogue file's raw content, refused (UsageError) if any mapping holds an unknown key."""
    raw = _keys(path, "top level", raw, TOP_KEYS)
    for name, arch in _mapping(path, "architectures", raw.get("architectures")).items():
        _keys(path, f"architectures.{name}", arch, ARCH_KEYS)
    for name, asset in _mapping(path, "assets", raw.get("assets")).items():
        entry = _keys(path, f"assets.{name}", asset, ASSET_KEYS)
        for rel, sums in _mapping(path, f"assets.{name}.files", entry.get("files")).items():
            _keys(path, f"assets.{name}.files.{rel}", sums, FILE_KEYS)
        if entry.get("images") is not None:
            _keys(path, f"assets.{name}.images", entry["images"], IMAGES_KEYS)
    return raw


@lru_cache(maxsize=None)
def _load_catalog(bundled: Path, site: Path | None) -> Catalog:
    merged: dict[str, dict[str, Any]] = {"architectures": {}, "assets": {}}
    for path in (bundled, site):
        if path is None:
            continue
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{path}: not a readable asset catalogue ({' '.join(str(exc).split())})") from None
        raw = check_keys(raw, path)
        for section in merged:
            merged[section].update(raw.get(section) or {})
    try:
        return _parse(merged)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        where = f"{bundled}" + (f" merged with {site}" if site else "")
        raise UsageError(f"{where}: not a valid asset catalogue ({what})") from None


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
        if a["kind"] == "classifier" and archs[a["arch"]].plugin is None:
            # `harness stage` and the run both build a classifier through its plugin
            raise ValueError(f"assets.{n}.arch: {a['arch']!r} names no classifier `plugin`")
        fmt = a.get("format", "dataset" if a["kind"] == "dataset" else "file")
        if fmt not in FORMATS:
            raise ValueError(f"assets.{n}.format: {fmt!r} not in {FORMATS}")
        assets[n] = Asset(name=n, kind=a["kind"], path=a["path"], published=a["published"],
                          arch=a.get("arch"), format=fmt,
                          files={rel: dict(v or {}) for rel, v in (a.get("files") or {}).items()},
                          images=a.get("images"), md5=a.get("md5"), sha256=a.get("sha256"),
                          sha256_prefix=a.get("sha256_prefix"), plugin=a.get("plugin"))
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
    allowed = ", ".join(PREFIX + n for n in cat.of_kind(kind)) or f"(no {kind} is catalogued)"
    if name not in cat.assets or cat.assets[name].kind != kind:
        raise GridError(file, key, f"{value!r} is not a catalogued {kind}; allowed: {allowed}; "
                                   "or a local path")


registry.set_asset_validator(check_ref)  # the registry checks asset references through the catalogue


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


def stage_record(value: str, root: Path, lock: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record `harness stage` wrote for a catalogued asset that it found good;
    AssetError when it was never staged or found bad (so nothing unverified is ever used)."""
    entry = (read_lock(root) if lock is None else lock).get(ref_name(value))
    if entry is None:
        raise AssetError(f"{value}: present but not verified yet: run `harness stage {root}` "
                         "(checks checksums and architecture once, records the sha256)")
    if entry.get("status") != "ok":
        raise AssetError(f"{value}: `harness stage` found it bad: {entry.get('detail', '?')}")
    return entry


def file_problem(path: Path, sums: dict[str, str | None], sha256: str | None = None) -> str | None:
    """One comparison of a file with expected checksums (md5, sha256, sha256_prefix); the file's
    sha256, if already computed, saves hashing it again. None when everything given matches."""
    from .fsutil import file_digest

    if sums.get("sha256") or sums.get("sha256_prefix"):
        sha256 = sha256 or file_digest(path, "sha256")
        if sums.get("sha256") and sha256 != sums["sha256"]:
            return f"{path}: sha256 {sha256} is not the expected {sums['sha256']}"
        if sums.get("sha256_prefix") and not sha256.startswith(str(sums["sha256_prefix"])):
            return f"{path}: sha256 {sha256} does not start with the published {sums['sha256_prefix']}"
    if sums.get("md5") and file_digest(path, "md5") != sums["md5"]:
        return f"{path}: md5 is not the published {sums['md5']}"
    return None


# ---------------------------------------------------------------- what a grid needs

@dataclass(frozen=True)
class Need:
    """One local asset a grid cell needs: the parameter value and where the grid says it."""

    kind: str
    value: str
    where: str  # e.g. "classifier[1].params.path"


def needs(cells: list[dict[str, Any]]) -> list[Need]:
    """Every local asset the cells name, once each, in grid order (registry-declared params)."""
    seen: dict[tuple[str, str], Need] = {}
    for cell in cells:
        for plugin_kind in ("dataset", "classifier", "purifier"):
            entry = cell.get(plugin_kind)
            if entry is None:  # a purify job has no data set plugin, maybe no classifier
                continue
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


# The image side each data set plugin gives the purifier (others take it from `size`).


def check_cells(cells: list[dict[str, Any]], file: str) -> None:
    """Plan-time consistency of catalogued assets with the cell naming them: a data set asset
    read by its own plugin, a classifier checkpoint built by the plugin (and class count) of its
    architecture, a denoiser trained at the resolution the data set gives."""
    cat = load_catalog()
    for cell in cells:
        ds = cell["dataset"]
        root = ds["params"].get("root")
        if is_ref(root) and cat.assets[ref_name(root)].plugin not in (None, ds["name"]):
            raise GridError(file, "dataset", f"{root} is laid out for dataset "
                                             f"{cat.assets[ref_name(root)].plugin!r}, not {ds['name']!r}")
        entry = cell["classifier"]
        value = entry["params"].get("path")
        if is_ref(value):
            arch = cat.archs[cat.assets[ref_name(value)].arch or ""]
            want = dict(arch.plugin_params)
            got = {k: entry["params"].get(k) for k in want}
            if arch.plugin != entry["name"] or got != want:
                need = f"classifier {arch.plugin!r}" + (f" with {want}" if want else "")
                raise GridError(file, "classifier", f"{value} is a {arch.name} checkpoint: it needs "
                                                    f"{need}, not {entry['name']!r} with {got or entry['params']}")
        den = arch_of("denoiser", cell["purifier"]["params"].get("denoiser"))
        side = registry.get("dataset", ds["name"]).image_side(ds["params"])
        if den is not None and side is not None and den.input[-1] != side:
            raise GridError(file, "purifier", f"denoiser {cell['purifier']['params']['denoiser']} "
                                              f"({den.name}) works on {den.input[-1]}x{den.input[-1]} images; "
                                              f"dataset {ds['name']!r} gives {side}x{side}")
        for kind in ("classifier", "purifier", "attack"):  # lengths in pixels fit in the image
            spec = registry.get(kind, cell[kind]["name"])
            for pname, value in cell[kind]["params"].items():
                param = spec.params.get(pname)
                if side is not None and param is not None and param.pixels and value > side:
                    raise GridError(file, f"{kind}.params.{pname}",
                                    f"{value} is more than the image side: dataset {ds['name']!r} "
                                    f"gives {side}x{side} images; expected at most {side}")


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
        asset = cat.assets[ref_name(need.value)]
        if not path.exists():
            out.append(f"{need.value}: missing (the {need.kind} of {need.where}); expected at {path}; "
                       f"published: {asset.published}")
            continue
        try:
            entry = stage_record(need.value, root, lock)
        except AssetError as exc:
            out.append(str(exc))
            continue
        # rel "" is a single-file asset itself (path / "" is path)
        changed = [rel or "." for rel, rec in entry.get("files", {}).items()
                   if not (path / rel).is_file()
                   or file_stamp(path / rel) != {k: rec[k] for k in ("size", "mtime_ns")}]
        if changed:
            out.append(f"{need.value}: changed since `harness stage` verified it ({', '.join(changed)}); "
                       f"run `harness stage {root}` again")
    return out


def refusal(bad: list[str], root: Path) -> UsageError:
    """The exit-2 error naming every asset problem (from `problems`)."""
    return UsageError(f"{len(bad)} asset problem(s) under {root} (set it with --assets, the grid's "
                      "`assets:` or $HARNESS_ASSETS; check it with `harness stage`):\n  " + "\n  ".join(bad))


def require(needed: list[Need], root: Path) -> None:
    """UsageError (exit 2) naming every missing or mismatched asset; nothing is submitted."""
    bad = problems(needed, root)
    if bad:
        raise refusal(bad, root)


def require_grid(grid: Any, cli_assets: str | None = None) -> Path:
    """The grid's asset directory, after `require` on everything the grid names."""
    root = assets_dir(cli_assets, grid.assets)
    require(needs(grid.representative_cells), root)  # (every asset a cell names is in one of them)
    return root


def pins(cells: list[dict[str, Any]], root: Path) -> dict[str, dict[str, str]]:
    """{asset value: {file: sha256}} as `harness stage` recorded them, for the assets the cells
    name and stage found good: the plan carries it, the workers hold the files to it."""
    lock = read_lock(root)
    out = {}
    for need in needs(cells):
        entry = lock.get(ref_name(need.value)) if is_ref(need.value) else None
        if entry and entry.get("status") == "ok":
            out[need.value] = {rel: rec["sha256"] for rel, rec in entry.get("files", {}).items()}
    return out


# ---------------------------------------------------------------- cost

def arch_of(kind: str, value: Any) -> Arch | None:
    """The architecture a denoiser or classifier parameter value stands for, if known."""
    cat = load_catalog()
    if not isinstance(value, str):
        return None
    if _bundled(kind, value):
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


def expected_sha256(value: str, root: Path, relative: str = "",
                    pinned: dict[str, dict[str, str]] | None = None) -> str | None:
    """The sha256 a loader must insist on for a file of an asset: the plan's record when the plan
    has one, else what `harness stage` verified (against the published checksums, where there
    are any). AssetError when a catalogued asset was never verified; None for a local path."""
    if not is_ref(value):
        return None
    recorded = (pinned or {}).get(value, {}).get(relative)
    if recorded:
        return recorded
    rec = stage_record(value, root).get("files", {}).get(relative)
    if not rec:
        raise AssetError(f"{value}: `harness stage` recorded no {relative or 'file'}; run it again")
    return rec["sha256"]


def verify_dataset_files(value: str, root: Path, pinned: dict[str, dict[str, str]] | None = None) -> None:
    """Hold a data set asset's listed files (small: label and attribute files, CIFAR pickles) to
    their verified sha256."""
    if not is_ref(value):
        return
    base = resolve(value, root)
    recorded = (pinned or {}).get(value)
    if recorded is None:
        recorded = stage_record(value, root).get("files", {})
    for rel, spec in load_catalog().assets[ref_name(value)].files.items():
        path = base / rel
        if spec.get("optional") and rel not in recorded and not path.is_file():
            continue  # an optional layout file that was absent when staged, and still is
        if not path.is_file():
            raise AssetError(f"{value}: {path} is missing{_published(value)}")
        bad = file_problem(path, {"sha256": expected_sha256(value, root, rel, pinned)})
        if bad:
            raise AssetError(f"{value}: {bad}; the file changed since it was verified")


def resolve_params(spec: Any, params: dict[str, Any], root: Path,
                   pinned: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """A plugin's parameters with asset values replaced by local paths (and a checkpoint's
    expected sha256 filled in from the plan or the stage record). AssetError if missing or unverified."""
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
            verify_dataset_files(value, root, pinned)
        elif "sha256" in spec.params and not params.get("sha256"):
            out["sha256"] = expected_sha256(value, root, "", pinned) or ""
    return out
