"""Which rows train, select and test a run.

Under the ``honest`` protocol (the default) selection uses a real validation
split apart from the training images: the dataset's own when it has one
(SynthPA, PA100k, PETA, RAPv2...), otherwise a seeded subset carved out of the
training split (RAPv1 has only trainval/test), and the run says so; a plan
whose validation split shares images with its training split is refused. The
test split is evaluated once, after training. The ``reference`` protocol is the
public code's practice: the epoch is picked on test (and the training split is
trainval), for a like-for-like number, labelled as such.
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
    protocol: str  # "honest" (select on val) or "reference" (select on test)
    note: str  # how validation and selection were done, for results tables

    @property
    def selects_on(self) -> str:
        """The split that selects the epoch: "val" or "test"."""
        return "test" if self.protocol == "reference" else "val"

    @property
    def selection(self) -> np.ndarray:
        return self.test if self.protocol == "reference" else self.val


def carve(rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (rest, carved) with round(fraction * n) seeded rows carved; both sorted."""
    n_val = max(1, int(round(fraction * len(rows))))
    if n_val >= len(rows):
        raise DatasetError(f"cannot carve {n_val} validation rows out of {len(rows)}")
    pick = np.random.default_rng(seed).permutation(len(rows))[:n_val]
    mask = np.zeros(len(rows), dtype=bool)
    mask[pick] = True
    return np.sort(rows[~mask]), np.sort(rows[mask])


def resolve_splits(annotations: Annotations, config: DataConfig, protocol: str = "honest", seed: int = 0) -> SplitPlan:
    """Rows for training, validation and test, following the data config.

    ``protocol`` and ``seed`` are the run's (:class:`~parlab.training.config.RunFields`): how the epoch is
    selected, and the seed of a carved validation split.
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
    shared = np.intersect1d(train, val).size
    if shared and protocol != "reference":
        raise DatasetError(f"{annotations.name}: {shared} images are in both {config.train_split} and "
                           f"{config.val_split}, so validation would select on training images; choose "
                           "splits apart (train_split='train') or the reference protocol (protocol='reference')")
    if config.train_limit:
        train = train[: config.train_limit]
    if protocol == "reference":
        note = (f"reference protocol: trained on {config.train_split}, selected on {config.test_split} "
                "(the public code's practice; optimistic)")
    return SplitPlan(train, val, test, protocol, note)
