"""The local data-set loaders, on tiny fixtures written in each official on-disk layout."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import registry
from harness.data import celebahq, cifar, imagenet
from harness.errors import AssetError, UsageError


def spec_load(name: str, params: dict):
    spec = registry.get("dataset", name)
    resolved = spec.resolve(params, "<test>", "dataset.params")
    return resolved, spec.load()(resolved)


# ---------------------------------------------------------------- CIFAR

def write_cifar(path: Path, n: int, label_keys: dict[str, list[int]], seed: int, protocol: int) -> np.ndarray:
    data = np.random.RandomState(seed).randint(0, 256, size=(n, 3072)).astype(np.uint8)
    d = {b"batch_label": b"testing batch 1 of 1", b"data": data,
         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    d.update({k.encode(): v for k, v in label_keys.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    return data


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_test_batch(tmp_path, protocol):
    labels = [3, 1, 4, 1, 5, 9, 2, 6]
    data = write_cifar(tmp_path / "cifar-10-batches-py" / "test_batch", 8, {"labels": labels}, 0, protocol)
    resolved, ds = spec_load("cifar10", {"root": str(tmp_path)})
    assert resolved == {"root": str(tmp_path)}
    assert len(ds) == 8
    x, y = ds.take([2, 0, 7])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [4, 3, 6]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # channel-major rows: the first 1024 values are red, row-major
    assert np.allclose(x[1, 0].numpy(), data[0, :1024].reshape(32, 32) / 255.0)
    assert np.allclose(x[0, 2].numpy(), data[2, 2048:].reshape(32, 32) / 255.0)


def test_cifar10_train_split(tmp_path):
    for i in range(1, 6):
        write_cifar(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", 2, {"labels": [i, i]}, i, 4)
    ds = cifar.load_cifar10({"root": str(tmp_path)}, split="train")
    assert len(ds) == 10 and ds.y.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_cifar_python2_module_names(tmp_path):
    """The official files were pickled by Python 2 and numpy 1: numpy.core.multiarray globals."""
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = write_cifar(path, 5, {"labels": [0, 1, 2, 3, 4]}, 2, 2)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    ds = cifar.load_cifar10({"root": str(tmp_path)})
    assert ds.y.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal((ds.x.numpy() * 255).round().astype(np.uint8).reshape(5, -1), data)


def test_cifar100_fine_and_coarse(tmp_path):
    fine, coarse = [10, 99, 0, 42, 7, 13], [1, 19, 0, 5, 2, 3]
    write_cifar(tmp_path / "cifar-100-python" / "test", 6, {"fine_labels": fine, "coarse_labels": coarse}, 1, 2)
    resolved, ds = spec_load("cifar100", {"root": str(tmp_path)})
    assert resolved["labels"] == "fine"
    assert ds.take(list(range(6)))[1].tolist() == fine
    _, ds = spec_load("cifar100", {"root": str(tmp_path), "labels": "coarse"})
    x, y = ds.take([5, 1])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 19]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_refused(tmp_path):
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(AssetError, match=r"refused to load: global (posix|os)\.system is not allowed"):
        cifar.load_cifar10({"root": str(tmp_path)})
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                                   b"x": __import__("collections").OrderedDict()}))
    with pytest.raises(AssetError, match="collections.OrderedDict is not allowed"):
        cifar.load_cifar10({"root": str(tmp_path)})


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(AssetError, match=r"cifar-10-batches-py/test_batch.*the CIFAR-10 python version"):
        cifar.load_cifar10({"root": str(tmp_path / "nowhere")})
    with pytest.raises(AssetError, match=r"cifar-100-python/test.*the CIFAR-100 python version"):
        spec_load("cifar100", {"root": str(tmp_path)})
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(AssetError, match="expected uint8 N×3072"):
        cifar.load_cifar10({"root": str(tmp_path)})
    path.write_bytes(b"not a pickle")
    with pytest.raises(AssetError, match="test_batch"):
        cifar.load_cifar10({"root": str(tmp_path)})


def test_root_is_required():
    from harness.errors import GridError

    for name in ("cifar10", "cifar100", "imagenet", "celebahq"):
        with pytest.raises(GridError, match="root: required"):
            registry.get("dataset", name).resolve({}, "<test>", "dataset.params")


# ---------------------------------------------------------------- images

def solid(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_resize_and_center_crop(tmp_path):
    from harness.data.images import LazyImageDataset

    # 40 wide × 20 high: left half red, right half blue, a green 2-pixel border column each side
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    arr[:, :2, 1] = arr[:, -2:, 1] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr.transpose(1, 0, 2).copy()).save(tmp_path / "b.png")  # 20 wide × 40 high
    ds = LazyImageDataset([tmp_path / "a.png", tmp_path / "b.png"], [0, 1], size=10)
    x, y = ds.take([0, 1])
    assert x.shape == (2, 3, 10, 10) and y.tolist() == [0, 1]
    # a: resized to 20×10, crop columns 5..15 -> no green border, red left, blue right
    assert float(x[0, 1].max()) < 0.05
    assert float(x[0, 0, :, 0].min()) > 0.95 and float(x[0, 2, :, -1].min()) > 0.95
    # b: resized to 10×20, crop rows 5..15 -> red top, blue bottom
    assert float(x[1, 0, 0].min()) > 0.95 and float(x[1, 2, -1].min()) > 0.95
    assert len(ds.take([])[0]) == 0


def imagenet_folders(root: Path, wnids: list[str], per_class: int) -> None:
    sizes = [(300, 260), (260, 300), (256, 256)]
    k = 0
    for c, w in enumerate(wnids):
        for j in range(per_class):
            solid(root / "val" / w / f"ILSVRC2012_val_{k:08d}.JPEG", sizes[k % 3], (20 * c, 100, 200))
            k += 1


def test_imagenet_class_folders(tmp_path):
    wnids = ["n01443537", "n01440764", "n01484850"]  # not in sorted order on purpose
    imagenet_folders(tmp_path, wnids, 3)
    resolved, ds = spec_load("imagenet", {"root": str(tmp_path), "size": 64})
    assert resolved["size"] == 64 and len(ds) == 9
    x, y = ds.take(list(range(9)))
    assert x.shape == (9, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # sorted wnid order: n01440764 -> 0, n01443537 -> 1, n01484850 -> 2
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert abs(float(x[0, 0].mean()) - 20 / 255) < 0.03  # n01440764 was written with red 20
    # default size 256, as DiffPure's purifier input
    _, ds = spec_load("imagenet", {"root": str(tmp_path)})
    assert ds.take([4])[0].shape == (1, 3, 256, 256)


def test_imagenet_classes_txt_order(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    imagenet_folders(tmp_path, wnids, 2)
    (tmp_path / "classes.txt").write_text("n01484850 great white shark\nn01440764 tench\n"
                                          "n01443537 goldfish\nn09999999 unused\n")
    ds = imagenet.load({"root": str(tmp_path), "size": 16})
    assert ds.labels.tolist() == [1, 1, 2, 2, 0, 0]


def test_imagenet_flat_with_labels(tmp_path):
    val = tmp_path / "val"
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 8)]
    for i, n in enumerate(names):
        solid(val / n, (40 + 3 * i, 30), (i * 30, 0, 0))
    # one label per sorted filename
    (tmp_path / "labels.txt").write_text("\n".join(str(v) for v in [65, 970, 230, 809, 516, 57, 334]) + "\n")
    _, ds = spec_load("imagenet", {"root": str(tmp_path), "size": 24})
    x, y = ds.take([6, 0])
    assert x.shape == (2, 3, 24, 24) and y.tolist() == [334, 65]
    assert abs(float(x[0, 0].mean()) - 180 / 255) < 0.03
    # "filename label" lines, any order, labels as wnids numbered by classes.txt
    (tmp_path / "classes.txt").write_text("n0\nn1\nn2\n")
    (tmp_path / "labels.txt").write_text("\n".join(f"{n} n{(i * 2) % 3}" for i, n in reversed(list(enumerate(names)))))
    ds = imagenet.load({"root": str(tmp_path), "size": 24})
    assert ds.labels.tolist() == [(i * 2) % 3 for i in range(7)]
    assert [p.name for p in ds.paths] == names
    # a wnid label without classes.txt is refused
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(AssetError, match="needs <root>/classes.txt"):
        imagenet.load({"root": str(tmp_path)})
    # a label count that does not match the images is refused
    (tmp_path / "labels.txt").write_text("1\n2\n")
    with pytest.raises(AssetError, match="2 labels for 7 images"):
        imagenet.load({"root": str(tmp_path)})


def test_imagenet_missing(tmp_path):
    with pytest.raises(AssetError, match=r"nowhere/val: missing; expected <root>/val/<wnid>/\*\.JPEG"):
        imagenet.load({"root": str(tmp_path / "nowhere")})
    solid(tmp_path / "val" / "a.JPEG", (8, 8), (0, 0, 0))
    with pytest.raises(AssetError, match="labels.txt: missing"):
        imagenet.load({"root": str(tmp_path)})


def write_attr(path: Path, names: list[str], rows: list[tuple[str, list[int]]], count: int | None = None) -> None:
    lines = [str(len(rows) if count is None else count), " ".join(names)]
    lines += [f"{f}  " + " ".join(f"{v:2d}" for v in vals) for f, vals in rows]
    path.write_text("\n".join(lines) + "\n")


def celeba_fixture(root: Path, folder: str = "CelebA-HQ-img") -> list[tuple[str, list[int]]]:
    rng = np.random.RandomState(3)
    rows = []
    for i in range(10):
        name = f"{i}.jpg"
        solid(root / folder / name, [(64, 64), (80, 64), (64, 90)][i % 3], (200, 10 * i, 50))
        rows.append((name, [int(v) for v in rng.choice([-1, 1], size=3)]))
    write_attr(root / "list_attr_celeba.txt", ["5_o_Clock_Shadow", "Eyeglasses", "Smiling"], rows)
    return rows


def test_celebahq_attribute(tmp_path):
    rows = celeba_fixture(tmp_path)
    resolved, ds = spec_load("celebahq", {"root": str(tmp_path), "attribute": "Eyeglasses", "size": 32})
    assert resolved == {"root": str(tmp_path), "attribute": "Eyeglasses", "size": 32}
    assert len(ds) == 10
    x, y = ds.take(list(range(10)))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.tolist() == [int(v[1] == 1) for _, v in rows]
    _, ds = spec_load("celebahq", {"root": str(tmp_path), "attribute": "Smiling"})
    assert ds.labels.tolist() == [int(v[2] == 1) for _, v in rows]
    assert ds.take([3])[0].shape == (1, 3, 256, 256)


def test_celebahq_unknown_attribute_and_missing(tmp_path):
    celeba_fixture(tmp_path, folder="images")
    with pytest.raises(UsageError, match="unknown attribute 'Glasses'.*5_o_Clock_Shadow, Eyeglasses, Smiling"):
        celebahq.load({"root": str(tmp_path), "attribute": "Glasses"})
    assert len(celebahq.load({"root": str(tmp_path), "attribute": "Smiling"})) == 10
    (tmp_path / "images" / "4.jpg").unlink()
    with pytest.raises(AssetError, match="4.jpg: listed in .*list_attr_celeba.txt but missing"):
        celebahq.load({"root": str(tmp_path), "attribute": "Smiling"})
    with pytest.raises(AssetError, match=r"list_attr_celeba.txt: missing; expected <root>/list_attr_celeba.txt"):
        celebahq.load({"root": str(tmp_path / "images"), "attribute": "Smiling"})
    write_attr(tmp_path / "list_attr_celeba.txt", ["Smiling"], [("0.jpg", [1])], count=5)
    with pytest.raises(AssetError, match="line 1 says 5 images but 1 are listed"):
        celebahq.load({"root": str(tmp_path), "attribute": "Smiling"})


def test_worker_interface(tmp_path):
    """What the worker does: selection over len(data), then take(order[...])."""
    from harness.data.base import selection

    celeba_fixture(tmp_path)
    _, ds = spec_load("celebahq", {"root": str(tmp_path), "attribute": "Smiling", "size": 8})
    order = selection(len(ds), 0)
    x, y = ds.take(order[np.asarray([0, 1, 2])])
    assert x.shape == (3, 3, 8, 8) and y.shape == (3,)
