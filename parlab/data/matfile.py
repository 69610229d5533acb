"""Reading MATLAB annotation files with errors that name the file and field.

A MATLAB v7 file stores its variables zlib-compressed, and scipy inflates each
one whole: a file of a few MB can ask for gigabytes. :func:`load_mat` first
inflates the compressed elements as a stream (counting, holding one chunk at a
time) and refuses a file whose content exceeds :data:`MAX_INFLATED_BYTES`.
"""

from __future__ import annotations

import struct as _struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from parlab.data.errors import DatasetError


# What a PAR annotation file holds, inflated, is about images x attributes x 8 bytes (labels as doubles), plus a
# cell of image names: RAPv2's 84,928 x 152 labels are 103 MB. A million images x 128 attributes (1 GiB) is far
# above any dataset of the field and far below what a small compressed file can ask for.
MAX_INFLATED_BYTES = 2**30
_MI_COMPRESSED = 15  # the element type of a zlib-compressed variable (MAT-file format, v5/v7)
_CHUNK = 2**20


def inflated_size(path: Path, limit: int) -> int:
    """Bytes the elements of v5/v7 MAT-file ``path`` hold once inflated; stops counting above ``limit``.

    Compressed elements are inflated a chunk at a time and dropped, so the memory used is a few chunks
    whatever the file asks for. A file that is not v5/v7 (v4, v7.3/HDF5, not MATLAB) counts as its size:
    scipy reads (or refuses) those without inflating anything.
    """
    total = 0
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return path.stat().st_size
        order = "<" if header[126:128] == b"IM" else ">"
        while total <= limit:
            tag = f.read(8)
            if len(tag) < 8:
                break
            kind, size = _struct.unpack(order + "II", tag)
            if kind >> 16:  # the small element format: type and size in the first four bytes, data in the next
                total += 8
                continue
            if kind != _MI_COMPRESSED:
                total += 8 + size
                f.seek(size + (-size % 8), 1)  # uncompressed elements are padded to 8 bytes
                continue
            inflater, left = zlib.decompressobj(), size
            while left and total <= limit:
                data = f.read(min(_CHUNK, left))
                if not data:
                    break
                left -= len(data)
                while data and total <= limit:
                    total += len(inflater.decompress(data, _CHUNK))
                    data = inflater.unconsumed_tail
            f.seek(left, 1)
    return total


def load_mat(path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` with a clear error for unreadable files and for content above
    :data:`MAX_INFLATED_BYTES` once inflated."""
    try:
        inflated = inflated_size(path, MAX_INFLATED_BYTES)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    if inflated > MAX_INFLATED_BYTES:
        raise DatasetError(
            f"{path}: holds more than {MAX_INFLATED_BYTES} bytes once inflated, far more than any PAR annotation "
            "(parlab.data.matfile.MAX_INFLATED_BYTES); refused as a possible decompression bomb"
        )
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
