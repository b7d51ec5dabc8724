"""CelebA-HQ with one binary attribute as the label, from a local directory, decoded lazily.

Layout under <root> (nothing is downloaded):

    an attribute list, the first of:  <root>/list_attr_celeba.txt
                                      <root>/CelebAMask-HQ-attribute-anno.txt
    the images, in the first existing of:  <root>/CelebA-HQ-img/  <root>/images/  <root>/

The attribute list has the list_attr_celeba.txt format: line 1 the number of images, line 2
the attribute names, then one "filename v1 v2 ..." line per image with -1 or 1 per attribute.
The examples are the listed images in file order; the label is 1 where the chosen
`attribute` is 1, else 0. Each image is resized (shorter side to `size`) and center-cropped to
size×size when taken (harness.data.images).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AssetError, UsageError
from .images import LazyImageDataset

ATTR_FILES = ("list_attr_celeba.txt", "CelebAMask-HQ-attribute-anno.txt")
IMAGE_DIRS = ("CelebA-HQ-img", "images", ".")
LAYOUT = ("expected <root>/list_attr_celeba.txt (or CelebAMask-HQ-attribute-anno.txt) and the "
          "images it lists in <root>/CelebA-HQ-img/, <root>/images/ or <root>/")


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, filenames, values int8 N×A in {-1, 1}) from a list_attr_celeba.txt file."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise AssetError(f"{path}: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].split()[0])
    except ValueError:
        raise AssetError(f"{path}:1: expected the number of images, got {lines[0]!r}") from None
    names = lines[1].split()
    files: list[str] = []
    rows: list[list[int]] = []
    for i, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise AssetError(f"{path}:{i}: {len(parts) - 1} values for {len(names)} attributes")
        try:
            vals = [int(v) for v in parts[1:]]
        except ValueError:
            raise AssetError(f"{path}:{i}: attribute values must be -1 or 1") from None
        if any(v not in (-1, 1) for v in vals):
            raise AssetError(f"{path}:{i}: attribute values must be -1 or 1")
        files.append(parts[0])
        rows.append(vals)
    if count != len(files):
        raise AssetError(f"{path}: line 1 says {count} images but {len(files)} are listed")
    return names, files, np.asarray(rows, dtype=np.int8).reshape(len(files), len(names))


def load(params: dict[str, Any], split: str = "test") -> LazyImageDataset:
    if split != "test":
        raise ValueError(f"only split 'test' is available, not {split!r}")
    root = Path(str(params["root"])).expanduser()
    if not root.is_dir():
        raise AssetError(f"{root}: missing; {LAYOUT}")
    attr_file = next((root / f for f in ATTR_FILES if (root / f).is_file()), None)
    if attr_file is None:
        raise AssetError(f"{root / ATTR_FILES[0]}: missing; {LAYOUT}")
    names, files, values = read_attributes(attr_file)
    attribute = params["attribute"]
    if attribute not in names:
        raise UsageError(f"celebahq: unknown attribute {attribute!r}; {attr_file} has: {', '.join(names)}")
    if not files:
        raise AssetError(f"{attr_file}: lists no images")
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d / files[0]).is_file()), None)
    if image_dir is None:
        raise AssetError(f"{files[0]} (first in {attr_file}): not found; {LAYOUT}")
    paths = [image_dir / f for f in files]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise AssetError(f"{missing}: listed in {attr_file} but missing")
    labels = (values[:, names.index(attribute)] == 1).astype(np.int64)
    return LazyImageDataset(paths, labels, size=int(params.get("size", 256)), name="celebahq")
