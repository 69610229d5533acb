"""A corpus of SynthPA people apart from the dataset's splits, for pretraining a CLIP.

The analogue of web image-text data: people drawn from the same label network
and renderer as SynthPA, but from random streams no SynthPA dataset uses
(every dataset image ``i`` of seed ``s`` comes from ``[s, i]``; a corpus image
from ``[CORPUS_STREAM, s, i]``), so a CLIP pretrained on it never sees an
image of the PAR splits. Images go through the same path as the dataset's
(rendered at 128x64, JPEG-encoded, decoded, resized by
:class:`parlab.data.images.PARTransform`'s resize) and are kept as uint8 at
the training resolution: ``images.npy`` (N, H, W, 3) and ``labels.npy``
(N, A), memory-mapped when read. A corpus folder is built once per
(size, seed, image size) and reused; captions are drawn from the labels when
training (:mod:`parlab.data.synthpa.captions`). A corpus of other settings is
replaced only in a folder parlab made (:func:`parlab.files.check_replaceable`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from parlab.data.synthpa.network import sample_labels
from parlab.data.synthpa.render import render_jpeg
from parlab.data.synthpa.writer import map_chunks
from parlab.errors import ConfigError, MissingFileError
from parlab.files import check_replaceable, make_owned_folder, replace_folder

CORPUS_STREAM = 0x5CA7  # first entropy word of every corpus image's random stream
_CHUNK = 250
_KEYS = {"n", "seed", "image_size", "version"}  # of corpus.json, which is how a corpus of parlab 0.x is known
WHAT = "caption corpus"


def _render_chunk(args: tuple[int, int, np.ndarray, tuple[int, int]]) -> tuple[int, np.ndarray]:
    from parlab.data.images import build_transform

    seed, start, labels, size = args
    resize = build_transform(size).resize  # the dataset transform's own resize: pixels match a decoded file's
    out = np.empty((len(labels), size[0], size[1], 3), np.uint8)
    for k, y in enumerate(labels):
        data = render_jpeg(y, np.random.default_rng([CORPUS_STREAM, seed, start + k]), (128, 64))
        with Image.open(io.BytesIO(data)) as img:
            out[k] = np.asarray(resize(img.convert("RGB")))
    return start, out


def corpus_labels(n: int, seed: int) -> np.ndarray:
    """(n, A) labels of a corpus: SynthPA's label network, on a stream apart from the datasets'."""
    return sample_labels(n, np.random.SeedSequence([CORPUS_STREAM, seed]).generate_state(1)[0])


def render_corpus(n: int, seed: int, image_size: tuple[int, int], workers: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, H, W, 3) uint8, labels (n, A) uint8) of a corpus, in index order whatever ``workers``."""
    labels = corpus_labels(n, seed)
    images = np.empty((n, *image_size, 3), np.uint8)
    jobs = [(seed, a, labels[a:a + _CHUNK], tuple(image_size)) for a in range(0, n, _CHUNK)]
    for start, out in map_chunks(_render_chunk, jobs, workers or os.cpu_count() or 1):
        images[start:start + len(out)] = out
    return images, labels


def caption_corpus(folder: str | Path, n: int, seed: int, image_size: tuple[int, int],
                   workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The corpus in ``folder``, built there first unless a corpus of these settings is already there.

    Returns (images (n, H, W, 3), labels (n, A)); the images memory-mapped, read-only.
    """
    if n < 1:
        raise ConfigError(f"a caption corpus needs at least one image, got n={n}")
    from parlab._version import __version__

    folder = Path(folder)
    manifest = {"n": int(n), "seed": int(seed), "image_size": [int(s) for s in image_size], "version": __version__}
    if _read_record(folder) != manifest:
        check_replaceable(folder, WHAT, made_before=lambda f: set(_read_record(f)) == _KEYS)
        tmp = make_owned_folder(folder.with_name(folder.name + ".partial"), WHAT)
        images, labels = render_corpus(n, seed, tuple(image_size), workers)
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
        replace_folder(tmp, folder, WHAT)
    try:
        return np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy")
    except (OSError, ValueError) as error:
        raise MissingFileError(f"{folder}: unreadable corpus ({error}); delete the folder to build it again") from error


def _read_record(folder: Path) -> dict:
    """``folder/corpus.json``; {} when there is none (or it is not one)."""
    try:
        record = json.loads((folder / "corpus.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
