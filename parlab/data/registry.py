"""Dataset registry: a plain dict of readers filled by a decorator."""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Callable

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError

Reader = Callable[..., Annotations]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Register ``fn(root, **options) -> Annotations`` under ``name``."""

    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return wrap


def available_datasets() -> list[str]:
    return sorted(READERS)


def load_dataset(name: str, root: str | Path, partition: int = 0, links_outside: bool = False,
                 **options) -> Annotations:
    """Read dataset ``name`` from its folder ``root`` (or an annotation file path).

    Args:
        name: a registered name (see :func:`available_datasets`), case-insensitive.
        root: the dataset folder as downloaded; the reader looks for the
            annotation file in the official and in Rethinking_of_PAR's layout.
        partition: default partition for datasets with several (PETA, RAP, UPAR).
        links_outside: image files may be links to outside the image folder
            (:attr:`Annotations.links_outside`).
        options: reader-specific options.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in READERS:
        close = difflib.get_close_matches(key, READERS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DatasetError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(available_datasets())}")
    ann = READERS[key](Path(root), **options)
    return replace(ann, partition=partition, links_outside=links_outside) if partition or links_outside else ann
