"""Image data sets read and written back in their own layout: folder tree, WebDataset tars, Parquet.

A purified data set must drop into the pipelines that read the original, so every output keeps
the input's keys, file names (only the image suffix becomes .png), labels and other fields;
images are re-encoded as PNG (lossless, deterministic), so writing the same pixels twice gives
the same bytes. Decoded images are uint8 H×W×C: C=1 for grayscale (modes L and 1), C=3 for RGB;
every other mode (RGBA, LA, P, CMYK, 16-bit, ...) goes through Pillow's convert("RGB"), which
drops alpha (no compositing) and clips 16-bit values. EXIF orientation is not applied (the
pixels are those torchvision's PIL loader sees) and no metadata (EXIF, ICC) is carried over.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UsageError
from .fsutil import atomic_path, atomic_write

LAYOUTS = ("folder", "webdataset", "parquet")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
TAR_IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff"})
KEY_COLUMNS = ("key", "__key__", "id")
BINARY_IMAGE_COLUMNS = ("image", "img", "png", "jpg")
PNG_COMPRESS_LEVEL = 6  # fixed: the zlib level changes the bytes, and manifests hash them


@dataclass(frozen=True)
class SourceShard:
    """A unit of work: folder images [start, stop) of the sorted key list, or one whole file."""

    index: int
    layout: str
    files: tuple[str, ...]  # POSIX paths relative to the source root
    start: int
    stop: int
    name: str  # output name: the tar/parquet file's relative path, or "folder-00003"

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class Item:
    """One image and its fields: folder {"label": class directory} (none at the root); webdataset
    {extension: raw bytes} of the sample's other members; parquet {column: value} of every column
    but the image's (the key column included)."""

    key: str
    index: int  # position within its shard
    image: np.ndarray | None  # uint8 H×W×C, None when error is set
    fields: dict[str, Any] = field(default_factory=dict)
    source_sha256: str = ""  # of the encoded input image bytes (of b"" when there were none)
    error: str | None = None


# ---------------------------------------------------------------- images

def decode_image(data: bytes) -> np.ndarray:
    """Encoded image → uint8 H×W×C (see the module docstring for modes); ValueError if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # Image.open is lazy: truncation only shows here
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arr = np.array(im, dtype=np.uint8)
    except Exception as e:  # Pillow's plugins raise OSError, SyntaxError, struct.error, ...
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def encode_png(image: np.ndarray) -> bytes:
    """uint8 H×W, H×W×1, H×W×3 or H×W×4 → PNG bytes; Pillow writes no time or text chunks."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, not {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"encode_png needs H×W×{{1,3,4}} pixels, not shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _item(key: str, index: int, data: bytes | None, fields: dict[str, Any],
          error: str = "no image data") -> Item:
    """An Item; a bad image becomes an error on the item (one corrupt file must not stop a run)."""
    digest = hashlib.sha256(data or b"").hexdigest()
    if data is None:
        return Item(key, index, None, fields, digest, error)
    try:
        return Item(key, index, decode_image(data), fields, digest)
    except ValueError as e:
        return Item(key, index, None, fields, digest, str(e))


# ---------------------------------------------------------------- discovery

def _root(src: Path) -> Path:
    return src.parent if src.is_file() else src


def _walk(src: Path) -> list[str]:
    """Every non-hidden file under src (relative POSIX paths, sorted). Hidden names (.DS_Store,
    ._AppleDouble, our own .tmp files) are never data; an unreadable directory is an error."""
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    if src.is_file():
        return [src.name]

    def fail(e: OSError) -> None:
        raise UsageError(f"{e.filename}: cannot read ({e.strerror})")

    out = []
    for d, dirs, files in os.walk(src, onerror=fail, followlinks=True):  # as torchvision's ImageFolder
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        rel = Path(d).relative_to(src)
        out += [(rel / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(out)


def _kind(rel: str) -> str | None:
    suffix = posixpath.splitext(rel)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "folder"
    return {".tar": "webdataset", ".parquet": "parquet"}.get(suffix)


def detect_layout(src: Path) -> str:
    """The layout of the files under src (a directory, or one .tar or .parquet file)."""
    src = Path(src)
    kinds = {k for k in map(_kind, _walk(src)) if k}
    if src.is_file() and kinds == {"folder"}:
        kinds = set()  # a single image is no data set
    if len(kinds) > 1:
        raise UsageError(f"{src}: mixed layouts ({', '.join(sorted(kinds))}); one data set has one layout")
    if not kinds:
        raise UsageError(f"{src}: no data set found: expected a layout of {', '.join(LAYOUTS)} (image "
                         "files in a tree, .tar shards, .parquet files)")
    return kinds.pop()


def ignored_files(src: Path, layout: str | None = None) -> list[str]:
    """Files under src the layout does not read (README, label maps, ...), for the caller to report."""
    layout = layout or detect_layout(Path(src))
    return [f for f in _walk(Path(src)) if _kind(f) != layout]


def _key_of_file(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def list_shards(src: Path, layout: str | None = None, shard_items: int = 256) -> list[SourceShard]:
    """The data set cut into shards, deterministically; every item is in exactly one shard."""
    src = Path(src)
    layout = layout or detect_layout(src)
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    files = [f for f in _walk(src) if _kind(f) == layout]
    if not files:
        raise UsageError(f"{src}: empty data set: no {layout} files")
    if layout == "folder":
        return _folder_shards(src, files, shard_items)
    seen: dict[str, Path] = {}  # keys are unique across the data set: the caller's manifests use them
    shards = []
    for i, rel in enumerate(files):
        path = _root(src) / rel
        keys = [s.key for s in _tar_samples(path)] if layout == "webdataset" else _parquet_keys(path)
        for key in keys if isinstance(keys, list) else ():
            if key in seen:
                raise UsageError(f"{path}: duplicate key {key!r} (also in {seen[key]})")
            seen[key] = path
        shards.append(SourceShard(i, layout, (rel,), 0, keys if isinstance(keys, int) else len(keys), rel))
    if not any(len(s) for s in shards):
        raise UsageError(f"{src}: empty data set: the {layout} files hold no items")
    return shards


def _folder_shards(src: Path, files: list[str], shard_items: int) -> list[SourceShard]:
    if shard_items < 1:
        raise ValueError(f"shard_items must be at least 1, not {shard_items}")
    by_key: dict[str, str] = {}
    for rel in files:
        key = _key_of_file(rel)
        if key in by_key:
            raise UsageError(f"{src}: duplicate key {key!r} ({by_key[key]} and {rel})")
        by_key[key] = rel
    ordered = [by_key[k] for k in sorted(by_key)]
    return [SourceShard(i, "folder", tuple(ordered[s:s + shard_items]), s,
                        min(s + shard_items, len(ordered)), f"folder-{i:05d}")
            for i, s in enumerate(range(0, len(ordered), shard_items))]


def _check_indices(shard: SourceShard, indices: Sequence[int] | None) -> list[int]:
    positions = sorted(set(range(len(shard)) if indices is None else (int(i) for i in indices)))
    bad = [i for i in positions if not 0 <= i < len(shard)]
    if bad:
        raise ValueError(f"shard {shard.name}: positions {bad[:5]} outside 0..{len(shard) - 1}")
    return positions


def read_items(src: Path, shard: SourceShard, indices: Sequence[int] | None = None) -> list[Item]:
    """The shard's items at those positions (all when None), in position order."""
    positions = _check_indices(shard, indices)
    if not positions:
        return []
    reader = {"folder": _folder_read, "webdataset": _tar_read, "parquet": _parquet_read}[shard.layout]
    return reader(_root(Path(src)), shard, positions)


def write_shard(dst: Path, src: Path, shard: SourceShard, outputs: dict[int, bytes]) -> list[Path]:
    """Write the shard back in its layout under dst with outputs (position → PNG) as images;
    positions without an output are left out. Each file is written atomically; idempotent."""
    _check_indices(shard, list(outputs))
    writer = {"folder": _folder_write, "webdataset": _tar_write, "parquet": _parquet_write}[shard.layout]
    return writer(Path(dst), _root(Path(src)), shard, outputs)


# ---------------------------------------------------------------- folder

def _folder_read(root: Path, shard: SourceShard, positions: list[int]) -> list[Item]:
    items = []
    for i in positions:
        rel = shard.files[i]
        key = _key_of_file(rel)
        fields = {"label": rel.split("/", 1)[0]} if "/" in rel else {}
        try:
            items.append(_item(key, i, (root / rel).read_bytes(), fields))
        except OSError as e:  # unreadable (permissions, vanished): this item's error, not the run's
            items.append(_item(key, i, None, fields, f"cannot read: {e}"))
    return items


def _folder_write(dst: Path, root: Path, shard: SourceShard, outputs: dict[int, bytes]) -> list[Path]:
    return [atomic_write(dst / f"{_key_of_file(shard.files[i])}.png", outputs[i]) for i in sorted(outputs)]


# ---------------------------------------------------------------- webdataset

@dataclass
class _Sample:
    key: str
    members: list[tarfile.TarInfo]
    image: int | None  # index into members of the image member


def _split_member(name: str) -> tuple[str, str] | None:
    """WebDataset's rule: key = path up to the first '.' of the basename, extension = the rest."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None  # WebDataset skips such members too
    return (f"{folder}/{stem}" if folder else stem), ext


def _tar_samples(path: Path) -> list[_Sample]:
    """Members grouped into samples from the headers alone (tarfile seeks over the data)."""
    samples: list[_Sample] = []
    done: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError) as e:
        raise UsageError(f"{path}: cannot read tar ({e})") from None
    for m in members:
        if m.name.startswith("/") or ".." in m.name.split("/"):
            raise UsageError(f"{path}: member {m.name!r} escapes the data set root")
        split = _split_member(m.name) if m.isfile() else None
        if split is None:
            continue
        key, ext = split
        if not samples or samples[-1].key != key:
            if key in done:  # WebDataset groups consecutive members: a key seen before is a second sample
                raise UsageError(f"{path}: duplicate key {key!r}")
            done.add(key)
            samples.append(_Sample(key, [], None))
        s = samples[-1]
        if any(o.name == m.name for o in s.members):
            raise UsageError(f"{path}: duplicate member {m.name!r} (key {key!r})")
        if s.image is None and ext.lower() in TAR_IMAGE_EXTS:
            s.image = len(s.members)
        s.members.append(m)
    return samples


def _tar_read(root: Path, shard: SourceShard, positions: list[int]) -> list[Item]:
    path = root / shard.files[0]
    samples = _tar_samples(path)
    items = []
    with tarfile.open(path, "r:") as tf:
        for i in positions:
            s = samples[i]
            data = {m.name: tf.extractfile(m).read() for m in s.members}  # type: ignore[union-attr]
            fields = {_split_member(m.name)[1]: data[m.name]  # type: ignore[index]
                      for j, m in enumerate(s.members) if j != s.image}
            image = data[s.members[s.image].name] if s.image is not None else None
            items.append(_item(s.key, i, image, fields))
    return items


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Fixed header fields: the same members give the same tar bytes on any machine and day."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _tar_write(dst: Path, root: Path, shard: SourceShard, outputs: dict[int, bytes]) -> list[Path]:
    # Plain tarfile, not webdataset's TarWriter: TarWriter stamps time.time() as mtime unless told
    # otherwise, writes uname/gname "bigdata" and sorts a sample's members by extension, so it
    # could neither give byte-identical reruns for free nor keep the input's member order.
    src = root / shard.files[0]
    samples = _tar_samples(src)
    out = dst / shard.name
    with atomic_path(out) as tmp, tarfile.open(src, "r:") as tin, \
            tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tout:
        for i in sorted(outputs):
            s = samples[i]
            if s.image is None:
                raise ValueError(f"{src}: sample {s.key!r} has no image member to replace")
            png_name = f"{s.key}.png"
            if any(m.name == png_name for j, m in enumerate(s.members) if j != s.image):
                raise UsageError(f"{src}: key {s.key!r}: {png_name} is already another member")
            for j, m in enumerate(s.members):
                data = outputs[i] if j == s.image else tin.extractfile(m).read()  # type: ignore[union-attr]
                tout.addfile(_tar_info(png_name if j == s.image else m.name, len(data)), io.BytesIO(data))
    return [out]


# ---------------------------------------------------------------- parquet

def _image_column(schema: Any, path: Path) -> tuple[str, bool]:
    """(name, is_struct): the first struct with a binary `bytes` field (Hugging Face's Image
    feature), else a plain binary column with a conventional name."""
    import pyarrow as pa

    def binary(t: Any) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    for f in schema:
        t = f.type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and binary(t.field("bytes").type):
            return f.name, True
    for f in schema:
        if f.name in BINARY_IMAGE_COLUMNS and binary(f.type):
            return f.name, False
    raise UsageError(f"{path}: no image column: expected a struct column with a binary 'bytes' "
                     f"field or a binary column named {'/'.join(BINARY_IMAGE_COLUMNS)}; "
                     f"columns are {', '.join(schema.names)}")


def _key_column(schema: Any) -> str | None:
    import pyarrow as pa

    t = pa.types
    ok = [f.name for f in schema if t.is_string(f.type) or t.is_large_string(f.type) or t.is_integer(f.type)]
    return next((name for name in KEY_COLUMNS if name in ok), None)


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid for a non-Parquet file, OSError when unreadable
        raise UsageError(f"{path}: cannot read Parquet ({e})") from None


def _parquet_keys(path: Path) -> list[str] | int:
    """The key column's values (only that column is read), or just the row count from the
    metadata when keys are "<file stem>/<row>" and so unique by construction."""
    pf = _parquet_file(path)
    _image_column(pf.schema_arrow, path)  # fail at planning time, not mid-run
    key = _key_column(pf.schema_arrow)
    if key is None:
        return pf.metadata.num_rows
    return [str(k) for k in pf.read(columns=[key]).column(key).to_pylist()]


def _parquet_rows(pf: Any, positions: list[int]) -> Any:
    """The rows at those positions, reading only the row groups that hold them."""
    import pyarrow as pa

    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    starts = np.cumsum([0] + sizes)
    group_of = {p: int(np.searchsorted(starts, p, side="right")) - 1 for p in positions}
    groups = sorted(set(group_of.values()))
    offset = dict(zip(groups, np.cumsum([0] + [sizes[g] for g in groups])))  # in the read table
    local = [int(offset[group_of[p]]) + p - int(starts[group_of[p]]) for p in positions]
    return pf.read_row_groups(groups).take(pa.array(local, type=pa.int64()))


def _parquet_read(root: Path, shard: SourceShard, positions: list[int]) -> list[Item]:
    path = root / shard.files[0]
    pf = _parquet_file(path)
    image_col, is_struct = _image_column(pf.schema_arrow, path)
    key_col = _key_column(pf.schema_arrow)
    rows = _parquet_rows(pf, positions).to_pylist()
    stem = posixpath.splitext(shard.name)[0]
    items = []
    for i, row in zip(positions, rows):
        value = row.pop(image_col)
        data = (value or {}).get("bytes") if is_struct else value
        key = str(row[key_col]) if key_col is not None else f"{stem}/{i}"
        items.append(_item(key, i, data, row))
    return items


def _png_struct(value: dict[str, Any] | None, png: bytes) -> dict[str, Any]:
    """Hugging Face's image struct with the PNG; a non-null path gets the .png suffix."""
    out = {**(value or {}), "bytes": png}
    if out.get("path") is not None:
        out["path"] = posixpath.splitext(out["path"])[0] + ".png"
    return out


def _parquet_write(dst: Path, root: Path, shard: SourceShard, outputs: dict[int, bytes]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = root / shard.files[0]
    pf = _parquet_file(src)
    schema = pf.schema_arrow  # with its metadata (Hugging Face's features live there)
    image_col, is_struct = _image_column(schema, src)
    positions = sorted(outputs)
    table = pf.read().take(pa.array(positions, type=pa.int64()))
    old = table.column(image_col).to_pylist()
    if is_struct:
        new = [_png_struct(v, outputs[i]) for i, v in zip(positions, old)]
    else:
        new = [outputs[i] for i in positions]
    idx = schema.get_field_index(image_col)
    table = table.set_column(idx, schema.field(idx), pa.array(new, type=schema.field(idx).type))
    table = table.replace_schema_metadata(schema.metadata)
    out = dst / shard.name
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return [out]


# ---------------------------------------------------------------- test data

#: What Hugging Face datasets writes into the schema metadata for an Image + int label data set.
_HF_FEATURES = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}


def write_dataset(dst: Path, layout: str, images: np.ndarray, labels: np.ndarray,
                  shard_items: int = 100) -> None:
    """Write N images (uint8 N×H×W or N×H×W×C) with int labels in a layout, for tests and examples:
    folder dst/<label>/<i:05d>.png; webdataset dst/shard-000000.tar... with <i:05d>.png and .cls;
    parquet dst/part-00000.parquet... with Hugging Face's image struct and an int64 label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst, labels = Path(dst), np.asarray(labels).astype(np.int64)
    if len(images) != len(labels) or layout not in LAYOUTS:
        raise ValueError(f"{len(images)} images, {len(labels)} labels, layout {layout!r}")
    pngs = [encode_png(a) for a in np.asarray(images)]
    if layout == "folder":
        for i, (png, y) in enumerate(zip(pngs, labels)):
            atomic_write(dst / str(int(y)) / f"{i:05d}.png", png)
        return
    for s, start in enumerate(range(0, len(pngs), shard_items)):
        part = range(start, min(start + shard_items, len(pngs)))
        if layout == "webdataset":
            with atomic_path(dst / f"shard-{s:06d}.tar") as tmp, \
                    tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
                for i in part:
                    for name, data in ((f"{i:05d}.png", pngs[i]), (f"{i:05d}.cls", str(labels[i]).encode())):
                        tf.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        else:
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            hf = json.dumps({"info": {"features": _HF_FEATURES}})
            schema = pa.schema([("image", image_type), ("label", pa.int64())], metadata={"huggingface": hf})
            table = pa.table({"image": pa.array([{"bytes": pngs[i], "path": f"{i:05d}.png"} for i in part],
                                                type=image_type),
                              "label": pa.array(labels[part.start:part.stop], type=pa.int64())}, schema=schema)
            with atomic_path(dst / f"part-{s:05d}.parquet") as tmp:
                pq.write_table(table, tmp)
