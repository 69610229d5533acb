"""Checks and conversions shared by the readers for raw label values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parlab.data.annotations import unsafe_image_name
from parlab.data.errors import DatasetError

RAW_VALUES = (-1, 0, 1, 2)
BINARY_VALUES = (-1, 0, 1)  # formats without RAP's "uncertain" 2 (PA100k, PETA, WIDER)


def check_raw_labels(raw: np.ndarray, path: Path, name: str, attributes: list[str] | tuple[str, ...],
                     allowed: tuple[int, ...] = RAW_VALUES) -> np.ndarray:
    """Validate a raw (N, A_all) label matrix and return it as int8.

    Raw files use 1 positive, 0 negative, -1 unknown and (RAP) 2 uncertain; any
    other value, or a 2 in a format that has no "uncertain" (``allowed``), means
    the file is not what it claims to be.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise DatasetError(f"{path}: field {name!r} should be a 2-D label matrix, got shape {raw.shape}")
    if raw.shape[1] != len(attributes):
        raise DatasetError(
            f"{path}: field {name!r} has {raw.shape[1]} columns but {len(attributes)} attribute names"
        )
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise DatasetError(f"{path}: field {name!r} contains NaN or infinite labels")
    bad = ~np.isin(raw, allowed)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DatasetError(
            f"{path}: field {name!r} has label {raw[r, c].item()} at row {r}, attribute {attributes[c]!r}; "
            f"labels must be in {{{', '.join(map(str, allowed))}}}"
        )
    return raw.astype(np.int8)


def find_file(root: Path, candidates: list[str], dataset: str) -> Path:
    """The first candidate annotation file under ``root``, or an error listing them all."""
    root = Path(root)
    if root.is_file():
        return root
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    tried = "\n  ".join(str(root / rel) for rel in candidates)
    raise DatasetError(f"{dataset}: no annotation file found; tried:\n  {tried}")


def find_image_root(root: Path, candidates: list[str], names: Sequence[str]) -> Path:
    """The image folder that holds the first of ``names``; the first candidate if none does (or no name).

    Label-only use (statistics on the annotation file alone) must work without
    any image on disk, so a missing folder is not an error here; opening an
    image is where a missing file is reported.
    """
    root = Path(root)
    if root.is_file():
        root = root.parent
    # No name, or an unsafe one: never probe outside the root; Annotations names the problem.
    first_image = str(names[0]) if len(names) else ""
    if not first_image or unsafe_image_name(first_image):
        return root / candidates[0]
    for rel in candidates:
        if (root / rel / first_image).is_file():
            return root / rel
    return root / candidates[0]
