"""Which images to look at, and the same images as each model's input.

:func:`select_rows` is the filter a prediction browser needs (FiftyOne's evaluation view): one attribute's
true/false positives/negatives at a threshold, ordered by probability or by how wrong the model is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np
import torch

from parlab.data.images import load_rgb
from parlab.errors import ConfigError


def attribute_index(name: str, attributes) -> int:
    """Position of ``name`` in ``attributes``; an unknown name is a ConfigError naming the close ones."""
    attributes = list(attributes)
    if name not in attributes:
        close = difflib.get_close_matches(name, attributes, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"attributes: {', '.join(attributes)}"
        raise ConfigError(f"unknown attribute {name!r}; {hint}")
    return attributes.index(name)


# kind -> which images, from (N,) truth (1, 0, -1 ignored) and (N,) decisions. An ignored label is never
# selected: there is no truth for the decision to be right or wrong against.
KINDS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "all": lambda truth, decided: truth >= 0,
    "true positive": lambda truth, decided: (truth == 1) & decided,
    "false positive": lambda truth, decided: (truth == 0) & decided,
    "false negative": lambda truth, decided: (truth == 1) & ~decided,
    "true negative": lambda truth, decided: (truth == 0) & ~decided,
    "mistakes": lambda truth, decided: (truth >= 0) & (decided != (truth == 1)),
}
# order -> sort key (ascending) from (N,) truth and (N,) probabilities; ties keep the split's order.
ORDERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "split order": lambda truth, prob: np.zeros_like(prob),
    "highest probability first": lambda truth, prob: -prob,
    "lowest probability first": lambda truth, prob: prob,
    "most wrong first": lambda truth, prob: -np.abs(prob - truth),
}


def select_rows(labels: np.ndarray, probs: np.ndarray, attribute: int, kind: str = "mistakes",
                threshold: float = 0.5, order: str = "most wrong first") -> np.ndarray:
    """Positions (into ``labels`` and ``probs``) of one attribute's images of ``kind``, in ``order``.

    Args:
        labels: (N, A) ground truth: 1 present, 0 absent, -1 ignored (never selected).
        probs: (N, A) probabilities; present is predicted above ``threshold``, as the metrics decide.
        attribute: the column.
        kind: a key of :data:`KINDS`: all (every known label), true/false positive/negative, or mistakes
            (false positives and false negatives).
        order: a key of :data:`ORDERS`; "most wrong first" sorts by |probability - label|, descending.

    Returns:
        (M,) int positions.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if order not in ORDERS:
        raise ConfigError(f"unknown order {order!r}; known: {', '.join(ORDERS)}")
    truth, prob = np.asarray(labels)[:, attribute], np.asarray(probs, dtype=np.float64)[:, attribute]
    chosen = np.flatnonzero(KINDS[kind](truth, prob > threshold))
    return chosen[np.argsort(ORDERS[order](truth, prob)[chosen], kind="stable")]


def pick_rows(annotations, split: str, attribute: str, n: int = 8, seed: int = 0) -> np.ndarray:
    """Annotation rows of ``split``: half with ``attribute`` present, half absent (seeded), positives first."""
    j = attribute_index(attribute, annotations.attributes)
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
