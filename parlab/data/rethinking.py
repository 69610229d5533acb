"""Rethinking_of_PAR's pickled datasets (``dataset_all.pkl``, ``dataset_zs_run0.pkl``).

An EasyDict with ``description``, ``root``, ``image_name``, ``label`` (all raw
attributes), ``attr_name``, ``label_idx.eval`` (evaluated columns, group
order), ``partition.{train,val,trainval,test}`` (0-based rows; one array or a
list of arrays, one per official partition) and ``weight_*``. UPAR's pickle
has the same layout plus ``dataset_ids``; its partition entries may be lists
of per-source arrays. Read with :func:`parlab.data.safe_pickle.load_pickle`;
:func:`write_dataset_pkl` writes any :class:`Annotations` in that layout.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from parlab.data.annotations import Annotations, unsafe_image_name
from parlab.data.errors import DatasetError
from parlab.data.labels import RAW_VALUES, check_raw_labels, find_file, find_image_root
from parlab.data.registry import register_reader
from parlab.data.safe_pickle import load_pickle
from parlab.files import write_atomic


def _get(d: dict, key: str, path: Path) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise DatasetError(f"{path}: missing field {key!r}")
    return d[key]


def _strings(value: Any, path: Path, key: str) -> list[str]:
    """A list or array of strings, refused otherwise (``str()`` of a nested list from a hostile pickle
    that shares one sublist many times over would take exponential time)."""
    items = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else value
    items = list(items) if isinstance(items, (list, tuple)) else None
    if items is None or not all(isinstance(v, str) for v in items):
        raise DatasetError(f"{path}: field {key!r} should be a list of strings")
    return [str(v) for v in items]


def _rows(value: Any) -> np.ndarray:
    """One partition entry: an index array, or a list of per-source arrays."""
    if isinstance(value, (list, tuple)):
        return np.concatenate([np.asarray(v, dtype=np.int64).reshape(-1) for v in value])
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _partitions(partition: dict, path: Path) -> list[dict[str, np.ndarray]]:
    """Split the per-split lists into a list of partitions."""
    if not isinstance(partition, dict) or not partition:
        raise DatasetError(f"{path}: field 'partition' should map split names to row indices")
    counts = {len(v) for v in partition.values() if isinstance(v, list) and v and not np.isscalar(v[0])}
    many = max(counts) if counts else 1
    out = []
    for k in range(many):
        part = {}
        for split, value in partition.items():
            if isinstance(value, list) and value and not np.isscalar(value[0]):
                if k < len(value):
                    part[split] = _rows(value[k])
            else:
                part[split] = _rows(value)
        out.append(part)
    return out


def _declared_root(declared: Any, path: Path, names: list[str]) -> Path | None:
    """The pickle's own ``root`` when it is a folder under the pickle's folder that holds the first image.

    A pickle is data and does not choose what parlab reads: a root elsewhere (every public pickle names a
    folder on its authors' machines) is not followed, and said so when it exists here. A relative root is
    taken from the pickle's folder. An unsafe first name is not probed (the file it names is not touched);
    :class:`Annotations` refuses it.
    """
    if not (isinstance(declared, str) and declared and names) or unsafe_image_name(names[0]):
        return None
    folder = os.path.abspath(path.parent)
    root = path.parent / declared  # an absolute ``declared`` replaces the folder
    # Compared as written (".." resolved, links not): a linked folder inside is fine, as for image folders.
    if os.path.commonpath([folder, os.path.abspath(root)]) != folder:
        if root.is_dir():
            warnings.warn(f"{path}: its root {declared} is outside the folder of the file and is not followed; "
                          f"images are looked for under {path.parent} (link the image folder there to use it)",
                          stacklevel=3)
        return None
    return root if (root / names[0]).is_file() else None


def read_rethinking_pickle(path: Path, name: str | None = None, image_root: Path | None = None,
                           allowed: tuple[int, ...] = RAW_VALUES) -> Annotations:
    """Read any Rethinking_of_PAR-style pickle into :class:`Annotations`.

    ``allowed``: the raw label values the source format has (a PA100k or PETA pickle has no 2).
    """
    info = load_pickle(path)
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a pickled (Easy)Dict, got {type(info).__name__}")
    names = _strings(_get(info, "image_name", path), path, "image_name")
    raw_attributes = _strings(_get(info, "attr_name", path), path, "attr_name")
    raw = check_raw_labels(np.asarray(_get(info, "label", path)), path, "label", raw_attributes, allowed)
    if len(raw) != len(names):
        raise DatasetError(f"{path}: 'label' has {len(raw)} rows but 'image_name' has {len(names)}")
    label_idx = info.get("label_idx") or {}
    columns = np.asarray(label_idx.get("eval", range(len(raw_attributes))), dtype=np.int64).reshape(-1)
    if columns.size and (columns.min() < 0 or columns.max() >= len(raw_attributes)):
        raise DatasetError(f"{path}: 'label_idx.eval' indexes columns outside 0..{len(raw_attributes) - 1}")
    groups = np.asarray(info.get("dataset_ids", np.zeros(0)), dtype=np.int64).reshape(-1)
    if image_root is None:
        image_root = _declared_root(info.get("root"), path, names)
    if image_root is None:
        image_root = find_image_root(path.parent, ["data", "images", "."], names)
    return Annotations.from_raw(
        name=name or str(info.get("description", "rethinking")).lower(),
        annotation_file=path,
        image_root=image_root,
        image_names=names,
        raw_labels=raw,
        raw_attributes=raw_attributes,
        eval_columns=columns,
        partitions=_partitions(_get(info, "partition", path), path),
        groups=groups,
    )


def _per_partition(values: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array for a dataset with one partition, else a list of arrays, one per partition (PETA's layout)."""
    return values[0] if len(values) == 1 else values


def write_dataset_pkl(annotations: Annotations, path: str | Path, image_root: str | Path | None = None) -> Path:
    """Write ``annotations`` as a Rethinking_of_PAR ``dataset_all.pkl``; returns ``path``.

    The layout of their ``format_pa100k.py``: ``image_name``, the raw ``label`` matrix and ``attr_name``,
    ``label_idx.eval`` (the evaluated columns, evaluation order), ``partition.{train,val,trainval,test}``
    (0-based int64 rows; a list of arrays when the dataset has several partitions), ``weight_train`` and
    ``weight_trainval`` (the raw labels' column means) and ``root``, the absolute image folder
    (``image_root``, default the annotations'). ``trainval`` is written as train followed by val where
    the annotations have those splits but no trainval. ``dataset_ids`` holds the per-image groups, if any.

    Only plain dicts, lists, strings and numpy arrays are pickled, so :func:`read_rethinking_pickle` (the
    ``"rethinking"`` reader) reads the file back without easydict. Their own loader reads fields as
    attributes (``dataset_info.partition.train``): it needs the dict wrapped in an ``EasyDict`` first.
    """
    partitions = []
    for part in annotations.partitions:
        part = {split: np.asarray(rows, dtype=np.int64) for split, rows in part.items()}
        if "trainval" not in part and {"train", "val"} <= set(part):
            part["trainval"] = np.concatenate([part["train"], part["val"]])
        partitions.append(part)
    splits = list(dict.fromkeys(split for part in partitions for split in part))
    if len(partitions) > 1 and any(split not in part for part in partitions for split in splits):
        raise DatasetError(f"{annotations.name}: its partitions do not all have the splits {', '.join(splits)}")
    raw = np.asarray(annotations.raw_labels)
    info = {
        "description": annotations.name,
        "root": os.path.abspath(image_root if image_root is not None else annotations.image_root),
        "image_name": [str(name) for name in annotations.image_names.tolist()],
        "label": raw,
        "attr_name": list(annotations.raw_attributes),
        "label_idx": {"eval": [int(c) for c in annotations.eval_columns]},
        "partition": {split: _per_partition([part[split] for part in partitions]) for split in splits},
    }
    for split in ("train", "trainval"):
        if split in splits:
            info[f"weight_{split}"] = _per_partition(
                [raw[part[split]].mean(axis=0).astype(np.float32) for part in partitions])
    if len(annotations.groups):
        info["dataset_ids"] = np.asarray(annotations.groups, dtype=np.int64)

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(info, f, protocol=4)

    return write_atomic(path, dump)


@register_reader("rethinking")
def read_rethinking(root: Path, file: str = "dataset_all.pkl") -> Annotations:
    """Any ``dataset_all.pkl``-style file: ``root`` is the file or its folder."""
    return read_rethinking_pickle(find_file(root, [file], "rethinking"))


@register_reader("petazs")
def read_petazs(root: Path) -> Annotations:
    """PETAzs (Jia et al., 2021): PETA with identity-disjoint zero-shot splits."""
    return read_rethinking_pickle(find_file(root, ["dataset_zs_run0.pkl"], "petazs"), name="petazs")


@register_reader("rapzs")
def read_rapzs(root: Path) -> Annotations:
    """RAPzs (Jia et al., 2021): RAPv2 with identity-disjoint zero-shot splits, 53 attributes."""
    return read_rethinking_pickle(find_file(root, ["dataset_zs_run0.pkl"], "rapzs"), name="rapzs")


@register_reader("upar")
def read_upar(root: Path) -> Annotations:
    """UPAR (Specker et al., WACV 2023): PA100k, PETA, RAPv2 and Market-1501 under one root.

    ``groups`` holds the per-image source-dataset id; partition 0 is all data,
    1/3/5/7 the cross-validation and 2/4/6/8 the leave-one-dataset-out splits.
    Image names are relative to the folder holding the source datasets, which
    is ``root`` itself.
    """
    path = find_file(root, ["dataset_all.pkl", "UPAR/dataset_all.pkl", "annotations/dataset_all.pkl"], "upar")
    base = root if root.is_dir() else path.parent
    return read_rethinking_pickle(path, name="upar", image_root=base)
