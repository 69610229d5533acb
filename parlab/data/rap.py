"""RAP v1 (Li et al., 2016) and RAP v2 (Li et al., TIP 2019): ``RAP_annotation.mat``.

Both are one struct ``RAP_annotation``. Labels 2 mean "uncertain" and are read
as negatives, as every published baseline does.

- v1: ``imagesname``, ``label`` (N x 92), ``attribute_eng``, ``partion`` (5
  partitions of 1-based ``train_index`` (Rethinking_of_PAR's trainval) and
  ``test_index``; no validation split), ``identity``. Evaluated: the first 51
  attributes in group order.
- v2: ``name``, ``attribute`` (152), ``data`` (N x 152), ``selected_attribute``
  (54, 1-based), ``partition_attribute`` (5 partitions of 1-based
  ``train_index`` / ``val_index`` / ``test_index``). Evaluated: the 54 selected
  attributes in the file's order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parlab.data.annotations import Annotations
from parlab.data.labels import check_raw_labels, find_file, find_image_root
from parlab.data.matfile import field, indices, load_mat, matrix, strings, struct, struct_list
from parlab.data.registry import register_reader
from parlab.data.rethinking import read_rethinking_pickle

RAPV1_EVAL_COLUMNS = tuple(range(9, 43)) + (1, 2, 3, 0) + tuple(range(4, 9)) + tuple(range(43, 51))
ANNOTATION_CANDIDATES = ["RAP_annotation.mat", "RAP_annotation/RAP_annotation.mat", "dataset_all.pkl"]
IMAGE_CANDIDATES = ["RAP_dataset", "data", "images", "."]


def _partitions(cells: np.ndarray, path: Path, name: str, splits: dict[str, str]) -> list[dict[str, np.ndarray]]:
    out = []
    for k, part in enumerate(struct_list(cells, path, name)):
        p = {ours: indices(field(part, theirs, path, f"{name}[{k}]."), path, theirs) for ours, theirs in splits.items()}
        if "train" in p and "val" in p:
            p["trainval"] = np.concatenate([p["train"], p["val"]])
        out.append(p)
    return out


@register_reader("rapv1")
def read_rapv1(root: Path) -> Annotations:
    path = find_file(root, ANNOTATION_CANDIDATES, "rapv1")
    if path.suffix == ".pkl":
        return read_rethinking_pickle(path, name="rapv1")
    rap = struct(field(load_mat(path), "RAP_annotation", path), path, "RAP_annotation")
    names = strings(field(rap, "imagesname", path, "RAP_annotation."), path, "RAP_annotation.imagesname")
    raw_attributes = strings(field(rap, "attribute_eng", path, "RAP_annotation."), path, "RAP_annotation.attribute_eng")
    raw = check_raw_labels(
        matrix(field(rap, "label", path, "RAP_annotation."), path, "RAP_annotation.label"),
        path, "RAP_annotation.label", raw_attributes,
    )
    partitions = _partitions(
        field(rap, "partion", path, "RAP_annotation."), path, "RAP_annotation.partion",
        {"trainval": "train_index", "test": "test_index"},
    )
    columns = np.array(RAPV1_EVAL_COLUMNS if len(raw_attributes) >= 51 else range(len(raw_attributes)))
    return Annotations.from_raw(
        name="rapv1",
        annotation_file=path,
        image_root=find_image_root(path.parent, IMAGE_CANDIDATES, names),
        image_names=names,
        raw_labels=raw,
        raw_attributes=raw_attributes,
        eval_columns=columns,
        partitions=partitions,
    )


@register_reader("rapv2")
def read_rapv2(root: Path) -> Annotations:
    path = find_file(root, ANNOTATION_CANDIDATES, "rapv2")
    if path.suffix == ".pkl":
        return read_rethinking_pickle(path, name="rapv2")
    rap = struct(field(load_mat(path), "RAP_annotation", path), path, "RAP_annotation")
    names = strings(field(rap, "name", path, "RAP_annotation."), path, "RAP_annotation.name")
    raw_attributes = strings(field(rap, "attribute", path, "RAP_annotation."), path, "RAP_annotation.attribute")
    raw = check_raw_labels(
        matrix(field(rap, "data", path, "RAP_annotation."), path, "RAP_annotation.data"),
        path, "RAP_annotation.data", raw_attributes,
    )
    columns = indices(field(rap, "selected_attribute", path, "RAP_annotation."), path, "selected_attribute")
    partitions = _partitions(
        field(rap, "partition_attribute", path, "RAP_annotation."), path, "RAP_annotation.partition_attribute",
        {"train": "train_index", "val": "val_index", "test": "test_index"},
    )
    return Annotations.from_raw(
        name="rapv2",
        annotation_file=path,
        image_root=find_image_root(path.parent, IMAGE_CANDIDATES, names),
        image_names=names,
        raw_labels=raw,
        raw_attributes=raw_attributes,
        eval_columns=columns,
        partitions=partitions,
    )
