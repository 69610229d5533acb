"""The one record every dataset reader returns.

Readers translate an official annotation format into :class:`Annotations`;
everything downstream (statistics, torch datasets, training) reads only this
record, so a new dataset is a new reader and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parlab.data.errors import DatasetError
from parlab.data.sentences import sentences_for

SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True, eq=False)
class Annotations:
    """Labels, names and partitions of one PAR dataset.

    Attributes:
        name: registry name of the dataset (``"pa100k"``, ``"peta"`` ...).
        annotation_file: the file the labels were read from.
        image_root: folder the images are expected in (may not exist when only
            labels are used).
        image_names: (N,) image file names relative to ``image_root``.
        labels: (N, A) int8 evaluated labels in evaluation order; 1 positive,
            0 negative, -1 ignored (unknown/uncertain where a dataset says so).
        attributes: (A,) evaluated attribute names, evaluation order.
        raw_labels: (N, A_all) every raw attribute of the official file.
        raw_attributes: (A_all,) names of the raw attributes.
        eval_columns: (A,) column of each evaluated attribute in ``raw_labels``.
        partitions: list of partitions; each maps a split name to 0-based row
            indices (int64). Datasets with official random partitions have
            several; the others have one.
        partition: the default partition index used by :meth:`split`.
        sentences: (A,) one plain sentence per evaluated attribute.
        groups: (N,) optional per-image group id (source dataset for UPAR,
            person id where known); empty when the format has none.
    """

    name: str
    annotation_file: Path
    image_root: Path
    image_names: np.ndarray
    labels: np.ndarray
    attributes: tuple[str, ...]
    raw_labels: np.ndarray
    raw_attributes: tuple[str, ...]
    eval_columns: np.ndarray
    partitions: list[dict[str, np.ndarray]]
    partition: int = 0
    sentences: tuple[str, ...] = ()
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n, a = self.labels.shape
        where = f"{self.annotation_file}"
        if len(self.image_names) != n:
            raise DatasetError(f"{where}: {len(self.image_names)} image names but {n} label rows")
        if len(self.attributes) != a:
            raise DatasetError(f"{where}: {len(self.attributes)} attribute names but {a} label columns")
        bad = ~np.isin(self.labels, (-1, 0, 1))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DatasetError(
                f"{where}: label {self.labels[r, c]} at row {r}, attribute {self.attributes[c]!r} "
                "is outside {-1, 0, 1}"
            )
        if not 0 <= self.partition < len(self.partitions):
            raise DatasetError(
                f"{where}: partition {self.partition} requested but the file has {len(self.partitions)}"
            )
        for k, part in enumerate(self.partitions):
            for split, rows in part.items():
                if rows.size and (rows.min() < 0 or rows.max() >= n):
                    raise DatasetError(
                        f"{where}: partition {k} split {split!r} indexes rows outside 0..{n - 1}"
                    )
        if self.sentences and len(self.sentences) != a:
            raise DatasetError(f"{where}: {len(self.sentences)} sentences for {a} attributes")

    @classmethod
    def from_raw(
        cls,
        name: str,
        annotation_file: Path,
        image_root: Path,
        image_names: list[str] | np.ndarray,
        raw_labels: np.ndarray,
        raw_attributes: list[str] | tuple[str, ...],
        eval_columns,
        partitions: list[dict[str, np.ndarray]],
        groups: np.ndarray | None = None,
    ) -> Annotations:
        """Build the record from raw labels and the evaluated columns (in evaluation order).

        Evaluated labels map RAP's "uncertain" (2) to negative; names and
        sentences follow the columns.
        """
        columns = np.asarray(eval_columns, dtype=np.int64)
        labels = raw_labels[:, columns].copy()
        labels[labels == 2] = 0
        attributes = tuple(raw_attributes[c] for c in columns)
        return cls(
            name=name,
            annotation_file=annotation_file,
            image_root=image_root,
            image_names=np.asarray(image_names),
            labels=labels,
            attributes=attributes,
            raw_labels=raw_labels,
            raw_attributes=tuple(raw_attributes),
            eval_columns=columns,
            partitions=partitions,
            sentences=sentences_for(attributes),
            groups=np.zeros(0, np.int64) if groups is None else groups,
        )

    @property
    def num_attributes(self) -> int:
        return self.labels.shape[1]

    def splits(self) -> tuple[str, ...]:
        """Split names of the default partition."""
        return tuple(self.partitions[self.partition])

    def split(self, name: str) -> np.ndarray:
        """0-based row indices of split ``name`` in the default partition."""
        part = self.partitions[self.partition]
        if name not in part:
            raise DatasetError(
                f"{self.name}: no split {name!r} in partition {self.partition}; "
                f"available: {', '.join(part)}"
            )
        return part[name]

    def split_labels(self, name: str) -> np.ndarray:
        """(n, A) labels of split ``name``."""
        return self.labels[self.split(name)]

    def positive_ratios(self, split: str = "train") -> np.ndarray:
        """(A,) fraction of positives among non-ignored entries of ``split``."""
        from parlab.labelstats import positive_ratio

        return positive_ratio(self.split_labels(split))

    def image_path(self, row: int) -> Path:
        """Full path of the image of row ``row``."""
        return self.image_root / str(self.image_names[row])

    def image_paths(self, split: str | None = None) -> list[Path]:
        """Full image paths (of one split, or of all rows)."""
        rows = range(len(self.image_names)) if split is None else self.split(split)
        return [self.image_path(i) for i in rows]

    def with_partition(self, partition: int) -> Annotations:
        """The same dataset with another default partition."""
        from dataclasses import replace

        return replace(self, partition=partition)
