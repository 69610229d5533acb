"""The one record every dataset reader returns.

Readers translate an official annotation format into :class:`Annotations`;
everything downstream (statistics, torch datasets, training) reads only this
record, so a new dataset is a new reader and nothing else.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parlab.data.errors import DatasetError
from parlab.data.sentences import sentences_for

# A name that could leave the image root: a ".." component, an absolute path (also Windows' "\x" and
# "C:x", so that one annotation file means the same everywhere), an empty name, a NUL character. One
# search over all names joined by newlines (MULTILINE) is far faster than a loop over 100,000 names;
# only a file that matches is looked at name by name.
_UNSAFE_NAME = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)|^[/\\]|^[A-Za-z]:|^$|\x00", re.MULTILINE)


def unsafe_image_name(name: str) -> str | None:
    """Why image name ``name`` could point outside the image root, or None when it stays inside.

    A lexical check only: nothing is read from disk, so a refused name tells nothing about the file it
    names, and a root that is a symlink (or holds symlinked folders) works as usual. An image *file*
    that is a link is looked at when it is first needed (:meth:`Annotations.missing_images`,
    :meth:`Annotations.image_path`).
    """
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if name[0] in "/\\" or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    return None


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
        links_outside: whether an image file may be a symbolic link to a file
            outside the image folder. Off by default: a folder given as a
            dataset is all that parlab reads, whatever a link inside it points
            to. Folders (the root and its sub-folders) may be links either way:
            that is how datasets are placed on another disk.
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
    links_outside: bool = False

    def __post_init__(self) -> None:
        n, a = self.labels.shape
        where = f"{self.annotation_file}"
        if n == 0:
            raise DatasetError(f"{where}: lists no image")
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
        self._check_image_names()

    def _check_image_names(self) -> None:
        """Refuse, when the record is built, any image name that could resolve outside ``image_root``."""
        names = [str(n) for n in self.image_names.tolist()]
        if not names or not _UNSAFE_NAME.search("\n".join(names)):
            return
        for row, name in enumerate(names):  # a name holding a newline can match without being unsafe
            reason = unsafe_image_name(name)
            if reason is not None:
                raise DatasetError(
                    f"{self.annotation_file}: image name {name!r} at row {row} {reason}; image names must "
                    f"stay inside the image folder {self.image_root}"
                )

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
        """Full path of the image of row ``row``; a link to outside the image folder is refused (see
        ``links_outside``)."""
        path = self.image_root / str(self.image_names[row])
        self._check_link(os.fspath(path), row)
        return path

    def image_paths(self, split: str | None = None) -> list[Path]:
        """Full image paths (of one split, or of all rows), each checked as :meth:`image_path` does."""
        rows = range(len(self.image_names)) if split is None else self.split(split)
        paths = [self.image_root / str(self.image_names[r]) for r in rows]
        for row, path in zip(rows, paths):
            self._check_link(os.fspath(path), row)
        return paths

    def missing_images(self, rows: np.ndarray) -> np.ndarray:
        """(n,) bool: which of the annotation rows ``rows`` (n,) have no image file under ``image_root``.

        One ``lstat`` per image (a third of a second for PA100k's 100,000 on a local disk); a file that is
        a link is resolved too, and refused when it leads outside the image folder. Labels alone never
        need this.
        """
        root = os.fspath(self.image_root)
        names = self.image_names
        missing = np.zeros(len(rows), dtype=bool)
        for i, r in enumerate(rows):
            path = os.path.join(root, str(names[r]))
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                missing[i] = True
                continue
            if stat.S_ISLNK(mode):
                missing[i] = not os.path.isfile(self._check_link(path, int(r)))
            else:
                missing[i] = not stat.S_ISREG(mode)
        return missing

    @functools.cached_property
    def _real_root(self) -> str:
        """The image folder with every link resolved (once per record: a read asks for it per image)."""
        return os.path.realpath(self.image_root)

    def _check_link(self, path: str, row: int) -> str:
        """``path`` resolved when it is a link (else as given); a :class:`DatasetError` when it resolves
        outside the image folder and ``links_outside`` is off."""
        if self.links_outside or not os.path.islink(path):
            return path
        target = os.path.realpath(path)
        if os.path.commonpath([self._real_root, target]) != self._real_root:
            raise DatasetError(
                f"{self.annotation_file}: image {str(self.image_names[row])!r} at row {row} is a link to "
                f"{target}, outside the image folder {self.image_root}; parlab reads nothing outside the "
                "dataset folder unless links_outside is set (--links-outside)"
            )
        return target

    def with_partition(self, partition: int) -> Annotations:
        """The same dataset with another default partition."""
        from dataclasses import replace

        return replace(self, partition=partition)
