"""Reading MATLAB annotation files with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from parlab.data.errors import DatasetError


def load_mat(path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` with a clear error for unreadable files."""
    try:
        return scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except NotImplementedError:
        raise DatasetError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with "
            "save(..., '-v7') in MATLAB or Octave"
        ) from None
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None


def field(container: Any, name: str, path: Path, where: str = "") -> Any:
    """Field ``name`` of a loadmat dict or a 1x1 MATLAB struct."""
    try:
        if isinstance(container, dict):
            return container[name]
        return container[name][0, 0] if container[name].shape == (1, 1) else container[name]
    except (KeyError, ValueError, IndexError):
        raise DatasetError(f"{path}: missing field {where + name!r}") from None


def struct(value: np.ndarray, path: Path, name: str) -> np.void:
    """The single element of a 1x1 struct array."""
    if not isinstance(value, np.ndarray) or value.dtype.names is None or value.size != 1:
        raise DatasetError(f"{path}: field {name!r} is not a MATLAB struct")
    return value.reshape(-1)[0]


def strings(value: np.ndarray, path: Path, name: str) -> list[str]:
    """A MATLAB cell array of strings (any shape) as a flat Python list."""
    out = []
    for item in np.asarray(value, dtype=object).reshape(-1, order="F"):
        while isinstance(item, np.ndarray) and item.dtype == object and item.size == 1:
            item = item.reshape(-1)[0]
        if isinstance(item, np.ndarray) and item.dtype.kind == "U":
            item = "".join(item.reshape(-1)) if item.size != 1 else str(item.reshape(-1)[0])
        if not isinstance(item, str):
            raise DatasetError(f"{path}: field {name!r} holds a {type(item).__name__}, expected strings")
        out.append(item.strip())
    return out


def matrix(value: Any, path: Path, name: str, ncols: int | None = None) -> np.ndarray:
    """A 2-D numeric matrix, checked for its column count."""
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: field {name!r} should be a numeric matrix, got shape {arr.shape}")
    if ncols is not None and arr.shape[1] != ncols:
        raise DatasetError(f"{path}: field {name!r} has {arr.shape[1]} columns, expected {ncols}")
    return arr


def indices(value: Any, path: Path, name: str, one_based: bool = True) -> np.ndarray:
    """A vector of row indices as 0-based int64."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: field {name!r} should hold row indices")
    arr = arr.reshape(-1).astype(np.int64)
    return arr - 1 if one_based else arr


def struct_list(value: np.ndarray, path: Path, name: str) -> list[np.void]:
    """Elements of a MATLAB struct array or of a cell array of 1x1 structs."""
    arr = np.asarray(value)
    if arr.dtype.names is not None:
        return list(arr.reshape(-1, order="F"))
    return [struct(cell, path, f"{name}[{k}]") for k, cell in enumerate(arr.reshape(-1, order="F"))]
