"""Datasets: readers of the official PAR formats, the SynthPA generator, torch datasets.

``load_dataset(name, root)`` returns an :class:`Annotations` record for every
supported dataset; SynthPA is written in PA100k's format and read by the same
code as PA100k.
"""

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError
from parlab.data.registry import available_datasets, load_dataset, register_reader

# Importing the reader modules fills the registry.
from parlab.data import custom, pa100k, peta, rap, rethinking, wider  # noqa: E402,F401
from parlab.data.synthpa import reader as _synthpa_reader  # noqa: E402,F401

__all__ = ["Annotations", "DatasetError", "available_datasets", "load_dataset", "register_reader"]
