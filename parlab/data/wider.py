"""WIDER Attribute (Li et al., ECCV 2016) as cropped person images.

``Annotations/{trainval,test}_name.txt`` (one image path a line) and
``Annotations/{trainval,test}_gt_label.txt`` (one line of 14 values a line,
optionally in brackets and comma-separated, values in {-1, 0, 1}; a value of
0 or less is a negative).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.labels import BINARY_VALUES, check_raw_labels, find_file, find_image_root
from parlab.data.registry import register_reader

ATTRIBUTES = ("Male", "longHair", "sunglass", "Hat", "Tshirt", "longSleeve", "formal",
              "shorts", "jeans", "longPants", "skirt", "faceMask", "logo", "stripe")


def _read_labels(path: Path) -> np.ndarray:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip().strip("[]").replace(",", " ")
        if not text:
            continue
        try:  # kept as floats: check_raw_labels refuses 0.5 instead of truncating it to 0
            values = [float(v) for v in text.split()]
        except ValueError:
            raise DatasetError(f"{path}:{number}: not a list of numbers: {line!r}") from None
        if len(values) != len(ATTRIBUTES):
            raise DatasetError(f"{path}:{number}: {len(values)} values, expected {len(ATTRIBUTES)}")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, len(ATTRIBUTES))


@register_reader("wider")
def read_wider(root: Path) -> Annotations:
    names, blocks, partition, start = [], [], {}, 0
    first = find_file(root, ["Annotations/trainval_name.txt", "trainval_name.txt"], "wider")
    folder = first.parent
    for split in ("trainval", "test"):
        name_file = folder / f"{split}_name.txt"
        label_file = folder / f"{split}_gt_label.txt"
        for f in (name_file, label_file):
            if not f.is_file():
                raise DatasetError(f"wider: missing annotation file {f}")
        split_names = [ln.strip() for ln in name_file.read_text().splitlines() if ln.strip()]
        # Values are in {-1, 0, 1}: a 2 would silently become a positive below.
        raw = check_raw_labels(_read_labels(label_file), label_file, "labels", ATTRIBUTES, BINARY_VALUES)
        if len(raw) != len(split_names):
            raise DatasetError(f"{label_file}: {len(raw)} label lines but {name_file.name} has {len(split_names)} names")
        names += split_names
        blocks.append(raw)
        partition[split] = np.arange(start, start + len(raw), dtype=np.int64)
        start += len(raw)
    raw = np.concatenate(blocks)
    ann = Annotations.from_raw(
        name="wider",
        annotation_file=first,
        image_root=find_image_root(folder.parent, ["Image", "images", "."], names),
        image_names=names,
        raw_labels=raw,
        raw_attributes=ATTRIBUTES,
        eval_columns=np.arange(len(ATTRIBUTES)),
        partitions=[partition],
    )
    # WIDER: 0 (unspecified) and -1 are both negatives, never "ignore".
    return replace(ann, labels=(raw > 0).astype(np.int8))
