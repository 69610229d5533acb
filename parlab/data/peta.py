"""PETA (Deng et al., ACM MM 2014): ``PETA.mat`` as released with DeepMAR.

One struct ``peta``: ``data`` (19000 x 109; column 0 the image number written
``%05d.png``, column 1 the person id, column 2 the source sub-dataset, labels
from column 4), ``attribute`` (105), ``selected_attribute`` (35, 1-based data
columns) and ``partion_attribute`` (5 partitions of 1-based ``train`` /
``val`` / ``test`` rows; the misspelling is official).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.labels import BINARY_VALUES, check_raw_labels, find_file, find_image_root
from parlab.data.matfile import field, indices, load_mat, matrix, strings, struct, struct_list
from parlab.data.registry import register_reader
from parlab.data.rethinking import read_rethinking_pickle

# Rethinking_of_PAR's group order of the 35 selected label columns.
EVAL_COLUMNS = (10, 18, 19, 30, 15, 7, 9, 11, 14, 21, 26, 29, 32, 33, 34, 6, 8, 12, 25, 27, 31,
                13, 23, 24, 28, 4, 5, 17, 20, 22, 0, 1, 2, 3, 16)
LABEL_OFFSET = 4  # first label column of ``data``
ANNOTATION_CANDIDATES = ["PETA.mat", "annotation/PETA.mat", "dataset_all.pkl"]
IMAGE_CANDIDATES = ["images", "data", "."]


@register_reader("peta")
def read_peta(root: Path) -> Annotations:
    path = find_file(root, ANNOTATION_CANDIDATES, "peta")
    if path.suffix == ".pkl":
        return read_rethinking_pickle(path, name="peta", allowed=BINARY_VALUES)
    peta = struct(field(load_mat(path), "peta", path), path, "peta")
    data = matrix(field(peta, "data", path, "peta."), path, "peta.data")
    raw_attributes = strings(field(peta, "attribute", path, "peta."), path, "peta.attribute")
    if data.shape[1] != LABEL_OFFSET + len(raw_attributes):
        raise DatasetError(
            f"{path}: peta.data has {data.shape[1]} columns; expected {LABEL_OFFSET} id columns "
            f"+ {len(raw_attributes)} attributes"
        )
    # PETA's labels are binary: a 2 is not RAP's "uncertain" here (it would silently become a negative).
    raw = check_raw_labels(data[:, LABEL_OFFSET:], path, "peta.data", raw_attributes, BINARY_VALUES)
    selected = indices(field(peta, "selected_attribute", path, "peta."), path, "peta.selected_attribute")
    selected = selected - (LABEL_OFFSET)  # 1-based data column -> 0-based label column
    if len(selected) == 35 and sorted(selected.tolist()) == sorted(EVAL_COLUMNS):
        columns = np.array(EVAL_COLUMNS)
    else:
        columns = selected
    n = len(raw)
    partitions = []
    parts = struct_list(field(peta, "partion_attribute", path, "peta."), path, "peta.partion_attribute")
    for k, part in enumerate(parts):
        p = {s: indices(field(part, s, path, f"peta.partion_attribute[{k}]."), path, s) for s in ("train", "val", "test")}
        p["trainval"] = np.concatenate([p["train"], p["val"]])
        partitions.append(p)
    names = [f"{int(i):05d}.png" for i in data[:, 0]]
    return Annotations.from_raw(
        name="peta",
        annotation_file=path,
        image_root=find_image_root(path.parent, IMAGE_CANDIDATES, names),
        image_names=names,
        raw_labels=raw,
        raw_attributes=raw_attributes,
        eval_columns=columns,
        partitions=partitions,
        groups=data[:, 1].astype(np.int64) if n else np.zeros(0, np.int64),
    )
