"""harness.dataset_io: each layout read and written back with the same keys, fields and layout."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import dataset_io as dio
from harness.errors import UsageError

SHARD = 100  # write_dataset's shard size in these tests


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from harness.data.digits import arrays

    x, y = arrays("test")
    return np.round(x[:, 0] * 255).astype(np.uint8), y  # N×8×8 uint8, N labels


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def _jpeg(seed: int = 0) -> bytes:
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def _original_index(layout: str, shard: dio.SourceShard, item: dio.Item) -> int:
    """Where the item came from in write_dataset's arrays (each layout names items its own way)."""
    if layout == "parquet":
        return shard.index * SHARD + item.index
    return int(item.key.rsplit("/", 1)[-1])


def _label(layout: str, item: dio.Item) -> int:
    return int({"folder": item.fields.get("label"), "webdataset": item.fields.get("cls"),
                "parquet": item.fields.get("label")}[layout])


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", dio.LAYOUTS)
def test_round_trip(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], layout: str) -> None:
    x, y = digits
    src, dst = tmp_path / "src", tmp_path / "dst"
    dio.write_dataset(src, layout, x, y, shard_items=SHARD)
    assert dio.detect_layout(src) == layout
    shards = dio.list_shards(src, shard_items=SHARD)
    assert sum(len(s) for s in shards) == len(x)
    seen: list[int] = []
    written: list[Path] = []
    for shard in shards:
        items = dio.read_items(src, shard)
        assert [it.index for it in items] == list(range(len(shard)))
        for it in items:
            i = _original_index(layout, shard, it)
            seen.append(i)
            assert it.error is None and it.image is not None and it.image.shape == (8, 8, 1)
            np.testing.assert_array_equal(it.image[:, :, 0], x[i])
            assert _label(layout, it) == y[i]
            assert len(it.source_sha256) == 64
        written += dio.write_shard(dst, src, shard, {it.index: dio.encode_png(255 - it.image) for it in items})
    assert sorted(seen) == list(range(len(x)))  # every item exactly once

    first = _tree(dst)
    assert sorted(first) == sorted(p.relative_to(dst).as_posix() for p in written)
    assert sorted(first) == sorted(_tree(src))  # same layout, same file names (already .png)
    for shard in shards:  # a second write gives the same bytes
        dio.write_shard(dst, src, shard, {it.index: dio.encode_png(255 - it.image)
                                          for it in dio.read_items(src, shard)})
    assert _tree(dst) == first
    assert not list(dst.rglob(".*"))  # no temporaries left behind

    assert dio.detect_layout(dst) == layout
    out_shards = dio.list_shards(dst, shard_items=SHARD)
    assert [(s.name, len(s)) for s in out_shards] == [(s.name, len(s)) for s in shards]
    for shard, out in zip(shards, out_shards):
        before, after = dio.read_items(src, shard), dio.read_items(dst, out)
        assert [(a.key, a.fields) for a in after] == [(b.key, b.fields) for b in before]
        for a, b in zip(after, before):
            np.testing.assert_array_equal(a.image, 255 - b.image)


def test_read_subset_in_position_order(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    dio.write_dataset(tmp_path, "parquet", x[:30], y[:30], shard_items=30)
    pq.write_table(pq.read_table(tmp_path / "part-00000.parquet"), tmp_path / "part-00000.parquet",
                   row_group_size=7)  # several row groups: only the needed ones are read
    (shard,) = dio.list_shards(tmp_path)
    items = dio.read_items(tmp_path, shard, [22, 3, 15, 3])
    assert [it.index for it in items] == [3, 15, 22]
    for it in items:
        np.testing.assert_array_equal(it.image[:, :, 0], x[it.index])
    with pytest.raises(ValueError, match="outside"):
        dio.read_items(tmp_path, shard, [30])


def test_folder_shards_cut_by_key(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    dio.write_dataset(tmp_path, "folder", x[:25], y[:25])
    (tmp_path / "README.txt").write_text("not an image")
    shards = dio.list_shards(tmp_path, shard_items=10)
    assert [(s.name, s.start, s.stop) for s in shards] == [("folder-00000", 0, 10), ("folder-00001", 10, 20),
                                                          ("folder-00002", 20, 25)]
    files = [f for s in shards for f in s.files]
    assert files == sorted(files) and len(set(files)) == 25
    assert dio.ignored_files(tmp_path) == ["README.txt"]


def test_jpeg_written_back_as_png(tmp_path: Path) -> None:
    jpg = _jpeg()
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    (tmp_path / "folder" / "cat" / "a.JPG").write_bytes(jpg)
    _tar(tmp_path / "wds" / "s.tar", [("d/a.jpg", jpg), ("d/a.cls", b"7"), ("d/a.json", b'{"x": 1}')])
    for layout, expect in (("folder", ["cat/a.png"]), ("webdataset", ["s.tar"])):
        src, dst = tmp_path / {"folder": "folder", "webdataset": "wds"}[layout], tmp_path / f"out-{layout}"
        (shard,) = dio.list_shards(src)
        (item,) = dio.read_items(src, shard)
        assert item.key == ("cat/a" if layout == "folder" else "d/a") and item.image.shape == (12, 10, 3)
        dio.write_shard(dst, src, shard, {0: dio.encode_png(item.image)})
        assert sorted(_tree(dst)) == expect
        (back,) = dio.read_items(dst, dio.list_shards(dst)[0])
        assert back.key == item.key and back.fields == item.fields
        np.testing.assert_array_equal(back.image, item.image)  # PNG keeps the decoded JPEG exactly
    with tarfile.open(tmp_path / "out-webdataset" / "s.tar") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["d/a.png", "d/a.cls", "d/a.json"]  # input order kept
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
        assert tf.extractfile("d/a.json").read() == b'{"x": 1}'


def test_corrupt_image_is_an_item_error(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    good = dio.encode_png(x[0])
    (tmp_path / "f" / "0").mkdir(parents=True)
    (tmp_path / "f" / "0" / "a.png").write_bytes(good)
    (tmp_path / "f" / "0" / "b.png").write_bytes(good[: len(good) // 2])
    _tar(tmp_path / "w" / "s.tar", [("a.png", good), ("a.cls", b"0"), ("b.png", good[:40]), ("b.cls", b"1"),
                                    ("c.txt", b"no image")])
    for src in (tmp_path / "f", tmp_path / "w"):
        (shard,) = dio.list_shards(src)
        items = dio.read_items(src, shard)
        assert items[0].error is None and items[0].image is not None
        assert items[1].error and items[1].image is None and items[1].key.endswith("b")
        assert len(items[1].source_sha256) == 64
        dio.write_shard(tmp_path / "out" / src.name, src, shard, {0: good})  # the corrupt one skipped
    assert sorted(_tree(tmp_path / "out" / "f")) == ["0/a.png"]
    assert items[2].error == "no image data" and items[2].fields == {"txt": b"no image"}
    with tarfile.open(tmp_path / "out" / "w" / "s.tar") as tf:
        assert tf.getnames() == ["a.png", "a.cls"]  # the whole skipped samples dropped


def test_parquet_schema_metadata_kept(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    dio.write_dataset(tmp_path / "src", "parquet", x[:10], y[:10])
    (shard,) = dio.list_shards(tmp_path / "src")
    items = dio.read_items(tmp_path / "src", shard)
    dio.write_shard(tmp_path / "dst", tmp_path / "src", shard, {i: dio.encode_png(255 - x[i]) for i in range(0, 10, 2)})
    before, after = (pq.read_schema(p / "part-00000.parquet") for p in (tmp_path / "src", tmp_path / "dst"))
    assert after.equals(before, check_metadata=True)
    assert json.loads(after.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    table = pq.read_table(tmp_path / "dst" / "part-00000.parquet")
    assert table.column("label").to_pylist() == [int(v) for v in y[0:10:2]]  # rows dropped, order kept
    assert [v["path"] for v in table.column("image").to_pylist()] == [f"{i:05d}.png" for i in range(0, 10, 2)]
    assert items[0].key == "part-00000/0" and items[0].fields == {"label": int(y[0])}


def test_parquet_key_column_and_plain_binary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    jpg = _jpeg(1)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"id": ["x", "y"], "img": [jpg, jpg], "caption": ["a", "b"]}), src / "p.parquet")
    pq.write_table(pa.table({"id": ["z"], "pic": pa.array([{"bytes": jpg, "path": "dir/z.jpeg"}], image_type)}),
                   src / "q.parquet")
    shards = dio.list_shards(src)
    items = dio.read_items(src, shards[0])
    assert [(it.key, it.fields) for it in items] == [("x", {"id": "x", "caption": "a"}), ("y", {"id": "y", "caption": "b"})]
    dio.write_shard(tmp_path / "out", src, shards[0], {1: dio.encode_png(items[1].image)})
    dio.write_shard(tmp_path / "out", src, shards[1], {0: b"PNG"})
    assert pq.read_table(tmp_path / "out" / "p.parquet").to_pylist() == [
        {"id": "y", "img": dio.encode_png(items[1].image), "caption": "b"}]
    assert pq.read_table(tmp_path / "out" / "q.parquet").to_pylist() == [
        {"id": "z", "pic": {"bytes": b"PNG", "path": "dir/z.png"}}]
    pq.write_table(pa.table({"id": ["x"], "img": [jpg]}), src / "r.parquet")
    with pytest.raises(UsageError, match="duplicate key 'x'"):
        dio.list_shards(src)


def test_failed_write_leaves_old_file(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits
    dio.write_dataset(tmp_path / "src", "webdataset", x[:5], y[:5])
    (shard,) = dio.list_shards(tmp_path / "src")
    dio.write_shard(tmp_path / "dst", tmp_path / "src", shard, {i: dio.encode_png(x[i]) for i in range(5)})
    old = _tree(tmp_path / "dst")
    calls = []

    def fail_later(self: tarfile.TarFile, *a: object, **k: object) -> None:
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        real(self, *a, **k)

    real = tarfile.TarFile.addfile
    monkeypatch.setattr(tarfile.TarFile, "addfile", fail_later)
    with pytest.raises(OSError, match="disk full"):
        dio.write_shard(tmp_path / "dst", tmp_path / "src", shard, {i: dio.encode_png(255 - x[i]) for i in range(5)})
    assert _tree(tmp_path / "dst") == old  # the old complete tar, and no temporary beside it


def test_decode_modes() -> None:
    from PIL import Image

    def enc(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    assert dio.decode_image(enc(Image.new("RGBA", (4, 3), (1, 2, 3, 4)))).shape == (3, 4, 3)
    assert dio.decode_image(enc(Image.new("P", (4, 3)))).shape == (3, 4, 3)
    assert dio.decode_image(enc(Image.new("1", (4, 3), 1))).shape == (3, 4, 1)
    assert dio.encode_png(np.zeros((3, 4, 3), np.uint8)) == dio.encode_png(np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot decode"):
        dio.decode_image(b"not an image")


@pytest.mark.parametrize("case", ["missing", "empty", "unknown", "mixed", "escape", "absolute", "dup-folder",
                                  "dup-tar", "dup-across-tars", "empty-tar", "no-image-column"])
def test_bad_inputs(tmp_path: Path, case: str) -> None:
    png = dio.encode_png(np.zeros((2, 2), np.uint8))
    src, match = tmp_path / "data", str(tmp_path / "data")
    src.mkdir()
    if case == "missing":
        src.rmdir()
        match = "no such file"
    elif case == "unknown":
        (src / "notes.txt").write_text("x")
        match = "folder, webdataset, parquet"
    elif case == "mixed":
        (src / "a.png").write_bytes(png)
        _tar(src / "s.tar", [("b.png", png)])
        match = "mixed layouts"
    elif case in ("escape", "absolute"):
        name = "../x.png" if case == "escape" else "/etc/x.png"
        _tar(src / "s.tar", [("ok.png", png), (name, png)])
        match = f"s.tar: member '{name}' escapes"
    elif case == "dup-folder":
        (src / "c").mkdir()
        (src / "c" / "x.png").write_bytes(png)
        (src / "c" / "x.jpg").write_bytes(png)
        match = "duplicate key 'c/x'"
    elif case == "dup-tar":
        _tar(src / "s.tar", [("x.png", png), ("y.png", png), ("x.cls", b"1")])
        match = "s.tar: duplicate key 'x'"
    elif case == "dup-across-tars":
        _tar(src / "a.tar", [("x.png", png)])
        _tar(src / "b.tar", [("x.png", png)])
        match = "b.tar: duplicate key 'x'"
    elif case == "empty-tar":
        _tar(src / "s.tar", [])
        match = "empty data set"
    elif case == "no-image-column":
        pq.write_table(pa.table({"label": [1]}), src / "p.parquet")
        match = "p.parquet: no image column"
    with pytest.raises(UsageError, match=match.replace(".", r"\.").replace("(", r"\(")):
        dio.list_shards(src)
