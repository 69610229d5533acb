"""Which images to look at, and the same images as each model's input."""

from __future__ import annotations

import numpy as np
import torch

from parlab.data.images import load_rgb
from parlab.errors import ConfigError


def pick_rows(annotations, split: str, attribute: str, n: int = 8, seed: int = 0) -> np.ndarray:
    """Annotation rows of ``split``: half with ``attribute`` present, half absent (seeded), positives first."""
    if attribute not in annotations.attributes:
        raise ConfigError(f"{annotations.name}: no attribute {attribute!r}; attributes: {', '.join(annotations.attributes)}")
    j = annotations.attributes.index(attribute)
    rows = annotations.split(split)
    rng = np.random.default_rng(seed)
    chosen = []
    for value, count in ((1, (n + 1) // 2), (0, n // 2)):
        pool = rows[annotations.labels[rows, j] == value]
        chosen.append(rng.choice(pool, size=min(count, len(pool)), replace=False) if len(pool) else pool[:0])
    return np.concatenate(chosen)


def model_inputs(annotations, rows: np.ndarray, transform) -> tuple[list, torch.Tensor]:
    """(the images as stored, the (B, 3, H, W) batch ``transform`` makes of them)."""
    images = [load_rgb(annotations.image_path(r)) for r in rows]
    return images, torch.stack([transform(img) for img in images])
