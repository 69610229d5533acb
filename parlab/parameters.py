"""Notebook parameters as papermill and JupyterLab give them: paths from the repository, lists from text.

A notebook's relative paths (``data/synthpa``, ``figures``, ``runs/train``) are
read from the repository, not from the folder the kernel happens to run in:
``papermill notebooks/03_baseline.ipynb out.ipynb`` from the repository root
and the same notebook opened in JupyterLab write to the same places.
``papermill -p seeds "[0, 1]"`` passes the text ``"[0, 1]"``; :func:`as_lists`
reads it as the list it spells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from parlab.errors import ConfigError

NOTEBOOKS_DIR = "notebooks"
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def repository() -> Path:
    """The checkout the notebooks belong to.

    The folder above the ``parlab`` package when it holds ``notebooks/`` (a checkout, installed with ``pip
    install -e``); else the nearest folder at or above the working directory that holds ``notebooks/`` beside
    a ``parlab/`` or ``pyproject.toml``; else the working directory.
    """
    if (_PACKAGE_PARENT / NOTEBOOKS_DIR).is_dir():
        return _PACKAGE_PARENT
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / NOTEBOOKS_DIR).is_dir() and ((folder / "parlab").is_dir() or (folder / "pyproject.toml").is_file()):
            return folder
    return cwd


def in_repository(*paths: str) -> str | tuple[str, ...]:
    """Each path with a relative one read from :func:`repository` (absolute, ``~`` and empty ones unchanged).

    One path gives one string, several a tuple, so that ``root, figures_dir = in_repository(root, figures_dir)``
    reads as the assignment it is.
    """
    base = repository()
    resolved = tuple(p if not p else str(base / os.path.expanduser(p)) for p in map(str, paths))
    return resolved[0] if len(resolved) == 1 else resolved


def as_lists(**values: Any) -> list | tuple[list, ...]:
    """Each keyword's value as a list: a list or tuple as it is, a text spelling a JSON list (``"[64, 32]"``,
    what ``papermill -p`` passes) parsed. Anything else is a :class:`ConfigError` naming the parameter."""
    lists = []
    for name, value in values.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"parameter {name!r} must be a list such as [0, 1] (papermill: -p {name} \"[0, 1]\" "
                              f"or -y \"{name}: [0, 1]\"), got {values[name]!r}")
        lists.append(list(value))
    return lists[0] if len(lists) == 1 else tuple(lists)


def attributes_in(annotations, wanted: list[str], n: int = 4, log=print) -> list[str]:
    """The attributes of ``wanted`` that the dataset has, in that order; the ones it lacks are named through
    ``log``. When it has none of them, its first ``n`` attributes, said so."""
    kept = [a for a in wanted if a in annotations.attributes]
    lacking = [a for a in wanted if a not in annotations.attributes]
    if lacking:
        log(f"{annotations.name} has no attribute {', '.join(lacking)}: skipped")
    if not kept:
        kept = list(annotations.attributes[:n])
        log(f"using {annotations.name}'s first {len(kept)} attributes instead: {', '.join(kept)}")
    return kept
