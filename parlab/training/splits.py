"""Which rows train, select and test a run.

Selection uses a real validation split: the dataset's own when it has one
(SynthPA, PA100k, PETA, RAPv2...), otherwise a seeded subset carved out of the
training split (RAPv1 has only trainval/test), and the run says so. The test
split is evaluated once, after training. ``select_on="test"`` reproduces the
reference practice of picking the best epoch on test, for parity only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.training.config import DataConfig


@dataclass(frozen=True)
class SplitPlan:
    train: np.ndarray  # annotation rows
    val: np.ndarray
    test: np.ndarray
    select_on: str  # "val" or "test"
    note: str  # how validation and selection were done, for results tables

    @property
    def selection(self) -> np.ndarray:
        return self.val if self.select_on == "val" else self.test


def carve(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (rest, carved) with round(fraction * n) seeded rows carved; both sorted."""
    n_val = max(1, int(round(fraction * len(rows))))
    if n_val >= len(rows):
        raise DatasetError(f"cannot carve {n_val} validation rows out of {len(rows)}")
    pick = np.random.default_rng(seed).permutation(len(rows))[:n_val]
    mask = np.zeros(len(rows), dtype=bool)
    mask[pick] = True
    return np.sort(rows[~mask]), np.sort(rows[mask])


def resolve_splits(annotations: Annotations, config: DataConfig, select_on: str = "val", seed: int = 0) -> SplitPlan:
    """Rows for training, validation and test, following the data config.

    ``select_on`` and ``seed`` are the run's (:class:`~parlab.training.config.RunFields`): which split selects
    the epoch, and the seed of a carved validation split.
    """
    train = annotations.split(config.train_split)
    test = annotations.split(config.test_split)
    if config.val_split in annotations.splits():
        val = annotations.split(config.val_split)
        note = f"selected on {config.val_split} ({len(val)} images)"
    else:
        train, val = carve(train, config.val_fraction, seed)
        note = (
            f"selected on a validation subset carved from {config.train_split}: {len(val)} images "
            f"({config.val_fraction:.0%}, seed {seed}); {annotations.name} has no "
            f"{config.val_split!r} split"
        )
    overlap = np.intersect1d(train, test).size
    if overlap:
        raise DatasetError(f"{annotations.name}: {overlap} images are in both {config.train_split} and "
                           f"{config.test_split}")
    if config.train_limit:
        train = train[: config.train_limit]
    if select_on == "test":
        note = f"selected on {config.test_split} (reference practice, optimistic; for parity only)"
    return SplitPlan(train, val, test, select_on, note)
