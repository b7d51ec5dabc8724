"""CIFAR-10 and CIFAR-100 from their official "python version" directories, offline.

Layouts (as extracted from cifar-10-python.tar.gz / cifar-100-python.tar.gz):

    <root>/cifar-10-batches-py/test_batch            (train: data_batch_1 .. data_batch_5)
    <root>/cifar-100-python/test                     (train: train)

Each file is a pickle of a dict with b"data" (uint8 N×3072, the 1024 red, then green, then
blue values of each 32×32 image, row-major) and b"labels" (CIFAR-10) or b"fine_labels" and
b"coarse_labels" (CIFAR-100). Nothing is downloaded.

The pickles are read with a restricted unpickler: only the globals numpy needs to rebuild an
array are allowed, so a tampered file cannot run code while it loads.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AssetError
from .base import ArrayDataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 writes bytes in protocol-2 pickles; latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric  # numpy >= 2 (numpy.core is a deprecated alias)

    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        out[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    out[("_codecs", "encode")] = _latin1_encode
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR pickle "
                f"(only numpy array reconstruction is)")
        return allowed[(module, name)]


def read_pickle(path: Path) -> Any:
    """A CIFAR batch file, unpickled safely (bytes keys, as written by Python 2)."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise AssetError(f"{path}: refused to load: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise AssetError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None


def _key(d: dict, name: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 N×3×32×32 in [0,1], labels int64) from one batch file."""
    d = read_pickle(path)
    try:
        if not isinstance(d, dict):
            raise ValueError(f"a {type(d).__name__}, not a dict")
        data = np.asarray(_key(d, "data"))
        labels = np.asarray(_key(d, label_key), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"data is {data.dtype} {data.shape}, expected uint8 N×3072")
        if labels.shape != (data.shape[0],):
            raise ValueError(f"{len(labels)} labels for {data.shape[0]} images")
    except KeyError as e:
        raise AssetError(f"{path}: no {e.args[0]!r} entry; not a CIFAR batch file") from None
    except ValueError as e:
        raise AssetError(f"{path}: not a CIFAR batch file: {e}") from None
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, labels


def _files(root: Any, folder: str, names: list[str], what: str) -> list[Path]:
    base = Path(str(root)).expanduser() / folder
    paths = [base / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        expected = ", ".join(str(p) for p in paths)
        raise AssetError(f"{missing[0]}: missing; expected {expected} ({what}, extracted as is; "
                         f"nothing is downloaded)")
    return paths


def _dataset(paths: list[Path], label_key: str, name: str) -> ArrayDataset:
    parts = [read_batch(p, label_key) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), name=name)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def load_cifar10(params: dict[str, Any], split: str = "test") -> ArrayDataset:
    _check_split(split)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    paths = _files(params["root"], CIFAR10_DIR, names, "the CIFAR-10 python version")
    return _dataset(paths, "labels", "cifar10")


def load_cifar100(params: dict[str, Any], split: str = "test") -> ArrayDataset:
    _check_split(split)
    labels = params.get("labels", "fine")
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', not {labels!r}")
    paths = _files(params["root"], CIFAR100_DIR, [split], "the CIFAR-100 python version")
    return _dataset(paths, f"{labels}_labels", "cifar100")
