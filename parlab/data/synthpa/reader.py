"""SynthPA is read by the PA100k reader: same file, same layout."""

from __future__ import annotations

from pathlib import Path

from parlab.data.annotations import Annotations
from parlab.data.labels import find_file
from parlab.data.pa100k import read_pa100k_mat
from parlab.data.registry import register_reader


@register_reader("synthpa")
def read_synthpa(root: Path) -> Annotations:
    return read_pa100k_mat(find_file(root, ["annotation.mat"], "synthpa"), name="synthpa")
