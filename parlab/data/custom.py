"""A person's own dataset as one table: ``root/labels.csv`` (and optionally ``root/sentences.csv``).

``labels.csv`` has a column ``image`` (a path relative to ``root``), a column
``split`` (``train``, ``val``, ``test``; ``trainval`` is read as ``train``)
and then one column per attribute holding 1 (present), 0 (absent) or -1
(unknown: ignored in the loss and the metrics)::

    image,split,Female,Hat,Backpack
    cam1/0001.jpg,train,1,0,-1
    cam1/0002.jpg,test,0,1,0

Without a ``val`` split a seeded validation subset is carved from ``train``
at training time, as for RAPv1. ``sentences.csv`` (``attribute,sentence``)
gives PromptPAR one sentence per attribute; without it sentences are made
from the column names. Both tables are UTF-8 (a byte-order mark is fine). A
table that cannot be used is one error naming the
line and the column: a value other than 1/0/-1, an unknown split, the same
image twice, an attribute without a positive in train, an image name that
leaves ``root``. Whether every image is there is checked where images are
used (training, evaluation), so that label statistics need none.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.registry import register_reader

SPLITS = {"train": "train", "trainval": "train", "val": "val", "test": "test"}
VALUES = {"1": 1, "0": 0, "-1": -1}


@register_reader("custom")
def read_custom(root: Path, **_) -> Annotations:
    """Read ``root/labels.csv`` (``root`` may also be the CSV file itself); see the module docstring."""
    path = root if root.suffix.lower() == ".csv" else root / "labels.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a custom dataset is a folder with labels.csv (columns image, "
                           "split, then one per attribute)")
    header, rows = _read_table(path)
    attributes = header[2:]
    names = [row[0] for row in rows]
    splits = [_split(path, line, row[1]) for line, row in enumerate(rows, start=2)]
    labels = np.array([[_value(path, line, attributes[j], v) for j, v in enumerate(row[2:])]
                       for line, row in enumerate(rows, start=2)], dtype=np.int8).reshape(len(rows), len(attributes))
    _check_duplicates(path, names)
    partition = {s: np.flatnonzero(np.array(splits) == s).astype(np.int64) for s in ("train", "val", "test")
                 if s in splits}
    _check_training_positives(path, labels, attributes, partition.get("train", np.zeros(0, np.int64)))
    annotations = Annotations.from_raw("custom", path, path.parent, names, labels, attributes,
                                       np.arange(len(attributes)), [partition])
    return replace(annotations, sentences=_sentences(path.parent / "sentences.csv", annotations))


def _csv_rows(path: Path) -> list[list[str]]:
    """The rows of CSV file ``path`` that hold something, each cell stripped; an encoding other than UTF-8
    (with or without a byte-order mark) or a malformed line is one error naming the line."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{path}: the file is UTF-16; save it as UTF-8 (a spreadsheet's 'CSV UTF-8')")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8 "
                           "(a spreadsheet's 'CSV UTF-8')") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return [[cell.strip() for cell in row] for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:  # a field above csv.field_size_limit(), a NUL character ...
        raise DatasetError(f"{path}, line {reader.line_num}: not a readable CSV line ({exc})") from None


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    table = _csv_rows(path)
    if not table:
        raise DatasetError(f"{path}: empty")
    header, rows = table[0], table[1:]
    if header[:2] != ["image", "split"]:
        raise DatasetError(f"{path}: the first columns must be 'image' and 'split', got {header[:2]}")
    if len(header) < 3:
        raise DatasetError(f"{path}: no attribute columns after 'image' and 'split'")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DatasetError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {line}: {len(row)} values for {len(header)} columns")
    if not rows:
        raise DatasetError(f"{path}: no images")
    return header, rows


def _split(path: Path, line: int, value: str) -> str:
    if value not in SPLITS:
        raise DatasetError(f"{path}, line {line}, column split: unknown split {value!r}; use "
                           f"{', '.join(SPLITS)}")
    return SPLITS[value]


def _value(path: Path, line: int, attribute: str, value: str) -> int:
    if value not in VALUES:
        raise DatasetError(f"{path}, line {line}, column {attribute}: {value!r} is not 1, 0 or -1")
    return VALUES[value]


def _check_duplicates(path: Path, names: list[str]) -> None:
    first: dict[str, int] = {}
    for line, name in enumerate(names, start=2):
        if name in first:
            raise DatasetError(f"{path}, line {line}, column image: {name!r} is also on line {first[name]}")
        first[name] = line


def _check_training_positives(path: Path, labels: np.ndarray, attributes: list[str], train: np.ndarray) -> None:
    if not len(train):
        raise DatasetError(f"{path}: no training images (split train or trainval)")
    none = [a for a, has in zip(attributes, (labels[train] == 1).any(0), strict=True) if not has]
    if none:
        raise DatasetError(f"{path}, column {none[0]}: no positive in the training split"
                           + (f" (nor in {', '.join(none[1:4])})" if len(none) > 1 else ""))


def _sentences(path: Path, annotations: Annotations) -> tuple[str, ...]:
    """The sentences of ``sentences.csv`` in attribute order, the ones made from the names where it has none."""
    attributes, made = annotations.attributes, annotations.sentences
    if not path.is_file():
        return made
    rows = _csv_rows(path)
    if not rows or rows[0][:2] != ["attribute", "sentence"]:
        raise DatasetError(f"{path}: expected the columns attribute,sentence")
    given = {r[0]: r[1] for r in rows[1:] if len(r) >= 2}
    unknown = sorted(set(given) - set(attributes))
    if unknown:
        raise DatasetError(f"{path}: attribute(s) {', '.join(unknown)} are not columns of labels.csv")
    return tuple(given.get(a) or made[j] for j, a in enumerate(attributes))
