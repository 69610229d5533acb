"""A restricted unpickler for Rethinking_of_PAR's ``dataset_*.pkl`` files.

Those files are pickled ``easydict.EasyDict`` objects. Unpickling an arbitrary
file can run arbitrary code, so only numpy arrays, numpy scalars and builtin
containers are rebuilt; ``EasyDict`` becomes a plain ``dict``; any other
global is refused by name. easydict does not need to be installed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from parlab.data.errors import DatasetError

# Everything a pickled numpy array, scalar or dtype needs to be rebuilt.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}
_AS_DICT = {("easydict", "EasyDict")}


class _PlainDict(dict):
    """Stands in for EasyDict; pickle sets its items through ``__setstate__``."""

    def __setstate__(self, state: dict) -> None:
        # EasyDict pickles its attributes in ``__dict__`` (the same keys as the
        # items); keep them as items so nested EasyDicts also become dicts.
        for key, value in state.items():
            self.setdefault(key, value)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only numpy and builtin types."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _AS_DICT:
            return _PlainDict
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DatasetError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' "
            "(only numpy arrays and builtin types are allowed)"
        )


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v) for v in obj]
    return obj


def load_pickle(path: str | Path) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler`; EasyDicts become dicts."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _to_plain(RestrictedUnpickler(f, str(path)).load())
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise DatasetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
