"""The ImageNet (ILSVRC2012) validation set from a local directory, decoded lazily.

Two layouts are accepted under <root> (nothing is downloaded):

1. class folders, as torchvision's ImageFolder / the usual `valprep.sh` result:
       <root>/val/<wnid>/*.JPEG
   The class index of a wnid is its position in <root>/classes.txt if that file exists
   (one wnid per line, or "wnid description" lines such as LOC_synset_mapping.txt; only the
   first token counts), else its position among the sorted folder names (torchvision's order,
   which the usual pretrained classifiers use).

2. flat, as extracted from ILSVRC2012_img_val.tar, plus a label file:
       <root>/val/*.JPEG   and   <root>/labels.txt
   labels.txt is either "filename label" lines (any order; filename relative to val/), or one
   label per line for the images in sorted filename order. A label is a 0-based class index in
   the classifier's order, or a wnid, which needs <root>/classes.txt to number it.
   NB: the devkit's ILSVRC2012_validation_ground_truth.txt numbers classes 1..1000 in the
   devkit's own order, not the sorted-wnid order: convert it to wnids first.

Images are .JPEG/.jpg/.jpeg/.png (any case); each is resized (shorter side to `size`) and
center-cropped to size×size when taken (harness.data.images).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AssetError
from .images import LazyImageDataset, is_image

LAYOUT = ("expected <root>/val/<wnid>/*.JPEG (class folders) or <root>/val/*.JPEG with "
          "<root>/labels.txt (flat ILSVRC2012 validation images)")


def _read_classes(path: Path) -> list[str]:
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise AssetError(f"{path}: a class is listed twice")
    return wnids


def _folders(val: Path, dirs: list[Path], classes: list[str] | None) -> tuple[list[Path], list[int]]:
    names = sorted(d.name for d in dirs)
    if classes is None:
        classes = names
    index = {w: i for i, w in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise AssetError(f"{val / unknown[0]}: class folder not in classes.txt")
    paths: list[Path] = []
    labels: list[int] = []
    for name in names:
        files = sorted(p for p in (val / name).iterdir() if is_image(p))
        paths += files
        labels += [index[name]] * len(files)
    if not paths:
        raise AssetError(f"{val}: the class folders hold no images; {LAYOUT}")
    return paths, labels


def _label(token: str, classes: list[str] | None, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        pass
    if classes is None:
        raise AssetError(f"{where}: label {token!r} is a wnid, which needs <root>/classes.txt to number it")
    try:
        return classes.index(token)
    except ValueError:
        raise AssetError(f"{where}: label {token!r} is not in classes.txt") from None


def _flat(root: Path, val: Path, files: list[Path], classes: list[str] | None) -> tuple[list[Path], list[int]]:
    label_file = root / "labels.txt"
    if not label_file.is_file():
        raise AssetError(f"{label_file}: missing; flat images in {val} need a label file; {LAYOUT}")
    lines = [ln.split() for ln in label_file.read_text().splitlines() if ln.strip()]
    files = sorted(files, key=lambda p: p.name)
    if lines and all(len(ln) == 1 for ln in lines):  # one label per sorted filename
        if len(lines) != len(files):
            raise AssetError(f"{label_file}: {len(lines)} labels for {len(files)} images in {val}")
        labels = [_label(ln[0], classes, f"{label_file}:{i + 1}") for i, ln in enumerate(lines)]
        return files, labels
    by_name: dict[str, int] = {}
    for i, ln in enumerate(lines):
        if len(ln) != 2:
            raise AssetError(f"{label_file}:{i + 1}: expected 'filename label' or one label per line")
        by_name[ln[0]] = _label(ln[1], classes, f"{label_file}:{i + 1}")
    paths, labels = [], []
    for name, lab in sorted(by_name.items()):
        p = val / name
        if not p.is_file():
            raise AssetError(f"{p}: listed in {label_file} but missing")
        paths.append(p)
        labels.append(lab)
    if not paths:
        raise AssetError(f"{label_file}: no labels")
    return paths, labels


def load(params: dict[str, Any], split: str = "test") -> LazyImageDataset:
    if split != "test":
        raise ValueError(f"only the validation set (split 'test') is available, not {split!r}")
    root = Path(str(params["root"])).expanduser()
    val = root / "val"
    if not val.is_dir():
        raise AssetError(f"{val}: missing; {LAYOUT}")
    classes_file = root / "classes.txt"
    classes = _read_classes(classes_file) if classes_file.is_file() else None
    entries = list(val.iterdir())
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if is_image(p)]
    if dirs and files:
        raise AssetError(f"{val}: holds both class folders and images; {LAYOUT}")
    if dirs:
        paths, labels = _folders(val, dirs, classes)
    elif files:
        paths, labels = _flat(root, val, files, classes)
    else:
        raise AssetError(f"{val}: no images; {LAYOUT}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    n_classes = len(classes) if classes is not None else None
    bad = (labels_arr < 0) | ((labels_arr >= n_classes) if n_classes else False)
    if bad.any():
        raise AssetError(f"{paths[int(np.argmax(bad))]}: label {labels_arr[bad][0]} out of range")
    return LazyImageDataset(paths, labels_arr, size=int(params.get("size", 256)), name="imagenet")
