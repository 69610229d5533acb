"""A dataset's images decoded once, at a training resolution, into one memory-mapped uint8 array.

Decoding JPEGs and resizing them every epoch is what keeps worker processes
busy and a GPU waiting. :func:`build_image_cache` decodes every image of a
dataset exactly as :class:`~parlab.data.images.PARTransform` does before its
random crop (``load_rgb`` in full, then the same resize) and stores the
result as ``images.npy``, (N, H, W, 3) uint8 in annotation-row order. What
training then does per batch (pad, crop, flip, normalise) is
:func:`parlab.data.batch_augment.augment_batch`, on the batch, on the device,
with the same per-image draws: a run gives the same numbers with or without
the cache.

One cache serves every method and run at that (dataset, annotation file,
image size, geometry: stretched, or letterboxed to a square first as
PromptPAR's public code does). It lives in ``<folder>/<dataset>-<H>x<W>-<key>/``, where the key
covers the image names, their sizes and modification times, the resolution
and :data:`FORMAT`: change an image and the run asks for a rebuild rather
than training on stale pixels. It is written to a temporary folder and
renamed when complete, so a killed build leaves nothing that looks usable.
Both carry :data:`parlab.files.MARKER`: a cache folder or temporary folder
without it is not parlab's, and is refused, never replaced or deleted.
Build it from the command line with ``parlab cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.images import PARTransform, load_rgb
from parlab.files import check_replaceable, make_owned_folder, remove_owned, replace_folder

# Bump when what is stored for an image changes: 2 decodes every JPEG in full (1 decoded JPEGs at least twice
# the image size at reduced scale), so a cache of format 1 may hold other pixels than training now reads.
FORMAT = 2
CHUNK = 256  # images decoded per task of a worker process
WHAT = "image cache"


@dataclass(frozen=True)
class ImageCache:
    """A built cache: ``images`` (N, H, W, 3) uint8, memory-mapped, row ``r`` holding annotation row ``r``."""

    folder: Path
    images: np.ndarray
    image_size: tuple[int, int]  # (height, width)
    square: bool = False  # letterboxed to a square before the resize (PARTransform.square)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 images of annotation ``rows`` (a copy, read in ascending order)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # sequential reads of the memory map, then back in order
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


def cache_key(annotations: Annotations, image_size: tuple[int, int], square: bool = False) -> str:
    """sha256 (12 hex digits) of the images' names, sizes and modification times, the resolution, geometry, format."""
    described = {"format": FORMAT, "size": list(image_size), "annotation": str(annotations.name)}
    if square:  # stretched caches keep the key they always had
        described["square"] = True
    digest = hashlib.sha256(json.dumps(described).encode())
    for path in annotations.image_paths():
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise DatasetError(f"{path}: image not found (building the image cache of {annotations.name})") from None
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def cache_folder(folder: str | Path, annotations: Annotations, image_size: tuple[int, int],
                 square: bool = False) -> Path:
    """Where the cache of ``annotations`` at (height, width) ``image_size`` lives under ``folder``."""
    h, w = image_size
    shape = f"{h}x{w}" + ("-square" if square else "")
    return Path(folder) / f"{annotations.name.lower()}-{shape}-{cache_key(annotations, image_size, square)}"


def open_image_cache(folder: str | Path, annotations: Annotations, image_size: tuple[int, int],
                     square: bool = False) -> ImageCache | None:
    """The cache under ``folder`` for these images at ``image_size``, or None when it was never built."""
    path = cache_folder(folder, annotations, image_size, square)
    if not (path / "images.npy").is_file():
        return None
    images = np.load(path / "images.npy", mmap_mode="r", allow_pickle=False)
    expected = (len(annotations.image_names), *image_size, 3)
    if images.shape != expected or images.dtype != np.uint8:
        raise DatasetError(f"{path / 'images.npy'}: holds {images.dtype} {images.shape}, expected uint8 {expected}; "
                           "delete the folder and build the cache again")
    return ImageCache(path, images, tuple(image_size), square)


def build_image_cache(folder: str | Path, annotations: Annotations, image_size: tuple[int, int],
                      workers: int | None = None, log=print, square: bool = False) -> ImageCache:
    """Decode every image of ``annotations`` at ``image_size`` into the cache under ``folder``; reuse a built one.

    ``square``: letterbox each image to a square before the resize (:class:`PARTransform`'s ``square``).
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    cache = open_image_cache(folder, annotations, image_size, square)
    if cache is not None:
        return cache
    path = cache_folder(folder, annotations, image_size, square)
    check_replaceable(path, WHAT)  # there without images.npy: empty, or a cache parlab made and lost
    tmp = make_owned_folder(path.with_name(path.name + f".tmp{os.getpid()}"), WHAT)
    start = time.perf_counter()
    paths = [str(p) for p in annotations.image_paths()]
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(paths), *image_size, 3))
    chunks = [(i, paths[i:i + CHUNK], image_size, square) for i in range(0, len(paths), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    try:
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                for first, block in pool.map(_decode_chunk, chunks):
                    images[first:first + len(block)] = block
        else:
            for chunk in chunks:
                first, block = _decode_chunk(chunk)
                images[first:first + len(block)] = block
        images.flush()
        del images
        manifest = {"format": FORMAT, "dataset": annotations.name, "images": len(paths),
                    "image_size": list(image_size), "square": square,
                    "annotation_file": str(annotations.annotation_file)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if (path / "images.npy").is_file():  # another process built it meanwhile, and may be reading it
            remove_owned(tmp, tmp)
        else:
            replace_folder(tmp, path, WHAT)
    except BaseException:
        with contextlib.suppress(OSError):  # the build's own error is the one to see
            remove_owned(tmp, tmp)
        raise
    log(f"image cache {path}: {len(paths)} images at {image_size[0]}x{image_size[1]} in "
        f"{time.perf_counter() - start:.1f} s ({(path / 'images.npy').stat().st_size / 2**20:.0f} MiB)")
    return open_image_cache(folder, annotations, image_size, square)


def _decode_chunk(job: tuple[int, list[str], tuple[int, int], bool]) -> tuple[int, np.ndarray]:
    """Images ``paths`` decoded and resized as the PAR transform does before cropping: (n, H, W, 3) uint8."""
    first, paths, image_size, square = job
    resize = PARTransform(image_size, train=False, square=square).resize
    return first, np.stack([np.asarray(resize(load_rgb(p)), dtype=np.uint8) for p in paths])
