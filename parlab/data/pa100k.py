"""PA100k (Liu et al., HydraPlus-Net, ICCV 2017): ``annotation.mat``.

Fields: ``attributes`` (26), ``{train,val,test}_images_name`` and
``{train,val,test}_label`` (0/1). Evaluation order as in Rethinking_of_PAR:
head, upper, lower, foot, bags, age, gender, view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.labels import BINARY_VALUES, check_raw_labels, find_file, find_image_root
from parlab.data.matfile import load_mat, field, strings
from parlab.data.registry import register_reader
from parlab.data.rethinking import read_rethinking_pickle

EVAL_COLUMNS = (7, 8, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 9, 10, 11, 12, 1, 2, 3, 0, 4, 5, 6)
ANNOTATION_CANDIDATES = ["annotation.mat", "annotation/annotation.mat", "dataset_all.pkl"]
IMAGE_CANDIDATES = ["data", "release_data/release_data", "release_data", "images", "."]


def read_pa100k_mat(path: Path, name: str = "pa100k", image_root: Path | None = None) -> Annotations:
    """Read a PA100k-format ``annotation.mat`` (also used by SynthPA)."""
    mat = load_mat(path)
    raw_attributes = strings(field(mat, "attributes", path), path, "attributes")
    names, blocks, partition, start = [], [], {}, 0
    for split in ("train", "val", "test"):
        split_names = strings(field(mat, f"{split}_images_name", path), path, f"{split}_images_name")
        # PA100k labels are 0/1: a 2 is not RAP's "uncertain" here (it would silently become a negative).
        labels = check_raw_labels(field(mat, f"{split}_label", path), path, f"{split}_label", raw_attributes,
                                  BINARY_VALUES)
        if len(labels) != len(split_names):
            raise DatasetError(
                f"{path}: {split}_label has {len(labels)} rows but {split}_images_name has {len(split_names)}"
            )
        names += split_names
        blocks.append(labels)
        partition[split] = np.arange(start, start + len(labels), dtype=np.int64)
        start += len(labels)
    partition["trainval"] = np.concatenate([partition["train"], partition["val"]])
    raw = np.concatenate(blocks)
    columns = np.array(EVAL_COLUMNS if len(raw_attributes) == 26 else range(len(raw_attributes)))
    if image_root is None:
        image_root = find_image_root(path.parent, IMAGE_CANDIDATES, names)
    return Annotations.from_raw(
        name=name,
        annotation_file=path,
        image_root=image_root,
        image_names=names,
        raw_labels=raw,
        raw_attributes=raw_attributes,
        eval_columns=columns,
        partitions=[partition],
    )


@register_reader("pa100k")
def read_pa100k(root: Path) -> Annotations:
    path = find_file(root, ANNOTATION_CANDIDATES, "pa100k")
    if path.suffix == ".pkl":
        return read_rethinking_pickle(path, name="pa100k", allowed=BINARY_VALUES)
    return read_pa100k_mat(path)


# Positive ratios of the real PA100k train split, in evaluation order (percent;
# published statistics, used to compare SynthPA without the real file).
TRAIN_POSITIVE_PERCENT = {
    "Hat": 4.40, "Glasses": 17.91, "ShortSleeve": 58.60, "LongSleeve": 41.40, "UpperStride": 5.10,
    "UpperLogo": 15.40, "UpperPlaid": 10.86, "UpperSplice": 4.40, "LowerStripe": 0.51, "LowerPattern": 1.78,
    "LongCoat": 2.82, "Trousers": 70.90, "Shorts": 17.39, "Skirt&Dress": 11.71, "boots": 0.62,
    "HandBag": 18.35, "ShoulderBag": 19.11, "Backpack": 14.76, "HoldObjectsInFront": 0.96, "AgeOver60": 1.41,
    "Age18-60": 93.40, "AgeLess18": 5.19, "Female": 45.62, "Front": 35.90, "Side": 28.38, "Back": 35.72,
}
