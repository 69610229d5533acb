"""Write SynthPA to disk in PA100k's format.

Layout (Rethinking_of_PAR's PA100k layout)::

    root/annotation.mat     PA100k fields, attributes in PA100k's raw order
    root/data/000001.jpg    images, 80/10/10 train/val/test in file order
    root/captions.tsv       "filepath<TAB>caption" (paths relative to root), each image's complete caption
                            (:func:`parlab.data.synthpa.captions.full_caption`)
    root/synthpa.json       seed, size, image size and parlab version

Each image is a pure function of ``(seed, index)``, so the output is
byte-identical for a seed whatever the number of worker processes. The
dataset is built in a sibling temporary folder (``root.partial``) and renamed
into place, so an interrupted run never leaves a half-written dataset behind.

Only an empty folder or a SynthPA parlab wrote (its :data:`parlab.files.MARKER`,
``root/.parlab``, or the ``synthpa.json`` of a parlab that wrote no marker) is
ever replaced; ``root.partial`` and ``root.old`` are deleted only when they
carry the marker too. Anything else is refused with one line.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import scipy.io

from parlab.data.pa100k import EVAL_COLUMNS
from parlab.data.synthpa.captions import full_caption
from parlab.data.synthpa.network import ATTRIBUTES, sample_labels
from parlab.data.synthpa.render import render_jpeg
from parlab.errors import ConfigError
from parlab.files import check_replaceable, make_owned_folder, replace_folder

SIZES = {"smoke": 800, "default": 12000}
# Bumped when the files a seed gives change (2: compact complete captions), so older folders are rebuilt.
FORMAT = 2
MANIFEST = "synthpa.json"
WHAT = "SynthPA"  # what the marker says the folder is
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
# The MAT-file header normally carries the creation time; a fixed one keeps
# files byte-identical across runs.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by parlab SynthPA".ljust(116)


def _render_chunk(args: tuple[int, int, int, np.ndarray, tuple[int, int], str]) -> int:
    seed, start, stop, labels, size, folder = args
    for i in range(start, stop):
        data = render_jpeg(labels[i - start], np.random.default_rng([seed, i]), size)
        with open(os.path.join(folder, f"{i + 1:06d}.jpg"), "wb") as f:
            f.write(data)
    return stop - start


def map_chunks(fn, jobs: list, workers: int):
    """``fn(job)`` for every job, on ``workers`` processes when more than one (results in any order)."""
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(fn, jobs)
    else:
        yield from map(fn, jobs)


def _split_bounds(n: int) -> dict[str, tuple[int, int]]:
    bounds, start = {}, 0
    for k, (split, frac) in enumerate(SPLIT_FRACTIONS):
        stop = n if k == len(SPLIT_FRACTIONS) - 1 else start + int(round(n * frac))
        bounds[split] = (start, stop)
        start = stop
    return bounds


def write_annotation(path: Path, labels: np.ndarray) -> None:
    """``annotation.mat`` in PA100k's layout for (N, 26) labels in ATTRIBUTES order."""
    raw = np.zeros_like(labels)
    raw[:, list(EVAL_COLUMNS)] = labels  # eval column j is raw column EVAL_COLUMNS[j]
    raw_names = [None] * len(ATTRIBUTES)
    for j, c in enumerate(EVAL_COLUMNS):
        raw_names[c] = ATTRIBUTES[j]
    content = {"attributes": np.array([[a] for a in raw_names], dtype=object)}
    for split, (a, b) in _split_bounds(len(labels)).items():
        content[f"{split}_images_name"] = np.array([[f"{i + 1:06d}.jpg"] for i in range(a, b)], dtype=object)
        content[f"{split}_label"] = raw[a:b].astype(np.uint8)
    buf = io.BytesIO()
    scipy.io.savemat(buf, content)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER
    path.write_bytes(bytes(data))


def generate(
    root: str | Path,
    n: int | str = "default",
    seed: int = 0,
    image_size: tuple[int, int] = (128, 64),
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate SynthPA under ``root`` (skipped when an identical one is there).

    Args:
        root: output folder.
        n: number of images, or a size name from :data:`SIZES`.
        seed: the same seed gives byte-identical files.
        image_size: (height, width) of the images.
        workers: rendering processes (default: all cores).
        overwrite: regenerate even if ``root`` holds a SynthPA with these settings.
    Returns:
        ``root`` as a Path.
    Raises:
        parlab.errors.NotOwnedError: ``root`` is neither missing, nor empty, nor a SynthPA parlab wrote; or
            ``root.partial`` / ``root.old`` are there and parlab did not make them. Nothing is deleted.
    """
    from parlab._version import __version__

    n = SIZES[n] if isinstance(n, str) else int(n)
    if n < 10:
        raise ConfigError(f"SynthPA needs at least 10 images for its three splits, got n={n}")
    root = Path(root)
    manifest = {"dataset": "synthpa", "format": FORMAT, "n": n, "seed": seed, "image_size": list(image_size),
                "version": __version__}
    if not overwrite and read_manifest(root) == manifest:
        return root
    check_replaceable(root, WHAT, made_before=lambda folder: read_manifest(folder).get("dataset") == "synthpa")
    tmp = make_owned_folder(root.with_name(root.name + ".partial"), WHAT)
    (tmp / "data").mkdir()

    labels = sample_labels(n, seed)
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(500, n // (workers * 4) or 1))
    jobs = [(seed, a, min(a + chunk, n), labels[a:min(a + chunk, n)], tuple(image_size), str(tmp / "data"))
            for a in range(0, n, chunk)]
    for _ in map_chunks(_render_chunk, jobs, workers):
        pass

    write_annotation(tmp / "annotation.mat", labels)
    lines = ["filepath\tcaption"] + [f"data/{i + 1:06d}.jpg\t{full_caption(labels[i])}" for i in range(n)]
    (tmp / "captions.tsv").write_text("\n".join(lines) + "\n")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return replace_folder(tmp, root, WHAT)


def read_manifest(root: Path) -> dict:
    """``root/synthpa.json`` as written by :func:`generate`; {} when there is none (or it is not one)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}
