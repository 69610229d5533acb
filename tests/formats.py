"""Writers of tiny annotation files in the official formats (methods.md section 2)."""

from __future__ import annotations

import csv
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.io


def cellstr(names) -> np.ndarray:
    return np.array([[n] for n in names], dtype=object)


def write_pa100k(root: Path, n=(8, 2, 2), seed=0) -> np.ndarray:
    """annotation.mat with 26 raw attributes; returns the (N, 26) raw labels."""
    rng = np.random.default_rng(seed)
    raw_names = ["Female", "AgeOver60", "Age18-60", "AgeLess18", "Front", "Side", "Back", "Hat", "Glasses",
                 "HandBag", "ShoulderBag", "Backpack", "HoldObjectsInFront", "ShortSleeve", "LongSleeve",
                 "UpperStride", "UpperLogo", "UpperPlaid", "UpperSplice", "LowerStripe", "LowerPattern",
                 "LongCoat", "Trousers", "Shorts", "Skirt&Dress", "boots"]
    labels = (rng.random((sum(n), 26)) < 0.4).astype(np.uint8)
    content, start = {"attributes": cellstr(raw_names)}, 0
    for split, k in zip(("train", "val", "test"), n):
        content[f"{split}_images_name"] = cellstr([f"{i + 1:06d}.jpg" for i in range(start, start + k)])
        content[f"{split}_label"] = labels[start:start + k]
        start += k
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "annotation.mat", content)
    return labels


def _partition_cells(parts: list[dict]) -> np.ndarray:
    cells = np.empty((len(parts), 1), dtype=object)
    for k, p in enumerate(parts):
        cells[k, 0] = {key: np.asarray(v, dtype=np.float64).reshape(-1, 1) for key, v in p.items()}
    return cells


def write_peta(path: Path, n=20, seed=0) -> np.ndarray:
    """PETA.mat with 105 attributes and 2 partitions (1-based rows); returns data."""
    rng = np.random.default_rng(seed)
    data = np.zeros((n, 109), dtype=np.uint16)
    data[:, 0] = np.arange(1, n + 1)
    data[:, 1] = np.arange(n) // 2 + 1
    data[:, 2] = 1
    data[:, 4:] = rng.random((n, 105)) < 0.3
    names = [f"peta{k}" for k in range(105)]
    names[10] = "accessoryHat"
    rows = np.arange(1, n + 1)
    parts = [{"train": rows[:10], "val": rows[10:12], "test": rows[12:]},
             {"train": rows[10:], "val": rows[8:10], "test": rows[:8]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"peta": {
        "data": data, "attribute": cellstr(names),
        "selected_attribute": np.arange(5, 40, dtype=np.uint8).reshape(1, -1),
        "partion_attribute": _partition_cells(parts),
    }})
    return data


def write_rapv1(path: Path, n=12, seed=0, bad_value=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, (n, 92)).astype(np.float64)  # 2 = uncertain
    if bad_value is not None:
        label[3, 5] = bad_value
    rows = np.arange(1, n + 1)
    parts = [{"train_index": rows[:9], "test_index": rows[9:]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"RAP_annotation": {
        "imagesname": cellstr([f"CAM01_frame{i}_line1.png" for i in range(n)]),
        "label": label, "attribute_eng": cellstr([f"rap{k}" for k in range(92)]),
        "attribute_exp": cellstr([f"rap{k}" for k in range(51)]),
        "partion": _partition_cells(parts), "position": np.zeros((n, 16)), "identity": np.arange(n).reshape(-1, 1),
    }})
    return label


def write_rapv2(path: Path, n=15, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 2, (n, 152)).astype(np.float64)
    rows = np.arange(1, n + 1)
    parts = [{"train_index": rows[:9], "val_index": rows[9:12], "test_index": rows[12:]}] * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"RAP_annotation": {
        "name": cellstr([f"img{i}.png" for i in range(n)]), "attribute": cellstr([f"v2_{k}" for k in range(152)]),
        "data": data, "selected_attribute": np.arange(1, 55).reshape(1, -1).astype(np.float64),
        "partition_attribute": _partition_cells(parts),
    }})
    return data


class _FakeEasyDict(dict):
    """Pickles like easydict.EasyDict (module easydict, attributes mirrored in __dict__)."""

    def __init__(self, d=None):
        super().__init__()
        for k, v in (d or {}).items():
            self[k] = v
            object.__setattr__(self, k, v)


def pickle_as_easydict(obj: dict, path: Path) -> None:
    """Pickle nested dicts as EasyDicts, as Rethinking_of_PAR does, without easydict installed."""
    module = types.ModuleType("easydict")
    _FakeEasyDict.__module__ = "easydict"
    _FakeEasyDict.__qualname__ = _FakeEasyDict.__name__ = "EasyDict"
    module.EasyDict = _FakeEasyDict

    def convert(x):
        return _FakeEasyDict({k: convert(v) for k, v in x.items()}) if isinstance(x, dict) else x

    previous = sys.modules.get("easydict")
    sys.modules["easydict"] = module
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(convert(obj), protocol=2))
    finally:
        if previous is None:
            sys.modules.pop("easydict", None)
        else:
            sys.modules["easydict"] = previous


def rethinking_dict(n=10, a=6, partitions=1, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    split = lambda s: [np.roll(rows, k)[s] for k in range(partitions)] if partitions > 1 else rows[s]  # noqa: E731
    return {
        "description": "toy", "root": "/nonexistent/images",
        "image_name": [f"{i:05d}.png" for i in range(n)],
        "label": (rng.random((n, a)) < 0.5).astype(np.int64),
        "attr_name": [f"att{k}" for k in range(a)],
        "label_idx": {"eval": list(range(a - 1, -1, -1)), "color": [], "extra": []},
        "partition": {"train": split(slice(0, 6)), "val": split(slice(6, 8)),
                      "trainval": split(slice(0, 8)), "test": split(slice(8, n))},
        "weight_train": np.full(a, 0.5),
    }


def write_table(root: Path, header: list[str], rows: list[list]) -> Path:
    """``root/labels.csv`` of a custom dataset with ``header`` and ``rows``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return root
