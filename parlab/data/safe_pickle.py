"""A restricted unpickler for Rethinking_of_PAR's ``dataset_*.pkl`` files.

Those files are pickled ``easydict.EasyDict`` objects. Unpickling an arbitrary
file can run arbitrary code, so only numpy arrays, numpy scalars and builtin
containers are rebuilt; ``EasyDict`` becomes a plain ``dict``; any other
global is refused by name. easydict does not need to be installed.

Nor may a small file ask for a lot of memory: the allowed constructors only
copy what the pickle itself holds. ``bytearray(8 * 10**9)``, ``list(range(10**10))``,
``numpy.ndarray((10**10,))`` or a numpy scalar without its data are refused by
name, as numpy's and Python's own pickles never call them that way; a range
(free in the file, an array downstream) may have at most :data:`MAX_RANGE` items.
"""

from __future__ import annotations

import io
import math
import pickle
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
    ("builtins", "bytes"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}
_AS_DICT = {("easydict", "EasyDict")}
# Constructors that build a container from their argument: only from one the pickle already holds
# (what Python's own pickles of sets and bytearrays pass), never from a size or a lazy range.
_COPYING = {"list", "tuple", "set", "frozenset", "bytearray", "bytes"}
_MATERIAL = (bytes, str, list, tuple, dict, set, frozenset)
# A range costs nothing in the file but becomes an array downstream (``np.asarray(range(10**10))``).
# 2**24 rows is far more than any PAR dataset has.
MAX_RANGE = 2**24


class _CheckedArray(np.ndarray):
    """What a pickled array is rebuilt as before :func:`_to_plain` makes it a plain ndarray again.

    numpy (2.4) crashes the process on an object array whose pickled list is shorter than its shape;
    the state is checked first.
    """

    def __setstate__(self, state: tuple) -> None:
        shape, dtype, data = state[-4], state[-3], state[-1]  # (version,) shape, dtype, fortran, data
        count = math.prod(int(n) for n in shape)
        if np.dtype(dtype).hasobject and (not isinstance(data, list) or len(data) != count):
            raise pickle.UnpicklingError(f"object array of shape {tuple(shape)} with a mismatched list")
        super().__setstate__(state)


class _NotCallable:
    """Stands in for a class that pickles pass as an argument but never call (``numpy.ndarray``)."""

    def __init__(self, name: str, refuse: Callable[[str], DatasetError]) -> None:
        self.name, self._refuse = name, refuse

    def __call__(self, *args: Any) -> Any:
        raise self._refuse(f"refusing to call '{self.name}' (it would allocate memory the file does not hold)")


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
        # Pickles of protocol 0-2 use Python 2's names (Python 3 writes them too, for compatibility):
        # a set, a range or an empty array's b"" arrive as __builtin__.set, .xrange, .bytes. Map them as
        # pickle's own find_class does, then hold them to the same rules.
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[module, name]
        module = IMPORT_MAPPING.get(module, module)
        if (module, name) in _AS_DICT:
            return _PlainDict
        if (module, name) not in _ALLOWED:
            raise DatasetError(
                f"{self._source}: refusing to unpickle global '{module}.{name}' "
                "(only numpy arrays and builtin types are allowed)"
            )
        found = super().find_class(module, name)
        if module == "builtins" and name in _COPYING:
            return self._copying(found)
        if module == "builtins" and name == "range":
            return self._range
        if name == "ndarray":
            return _NotCallable("numpy.ndarray", self._refused)
        if name == "_reconstruct":
            return self._reconstruct(found)
        if name == "scalar":
            return self._scalar(found)
        return found

    def _refused(self, what: str) -> DatasetError:
        return DatasetError(f"{self._source}: {what}")

    def _copying(self, ctor: Callable) -> Callable:
        def build(*args: Any) -> Any:
            if not all(isinstance(a, _MATERIAL) for a in args):
                shown = ", ".join(_short(a) for a in args)
                raise self._refused(f"refusing builtins.{ctor.__name__}({shown}): only a copy of data the "
                                    "file holds is allowed, not a size or a range")
            return ctor(*args)

        return build

    def _range(self, *args: Any) -> range:
        value = range(*args)
        try:
            too_long = len(value) > MAX_RANGE
        except OverflowError:  # longer than sys.maxsize
            too_long = True
        if too_long:
            raise self._refused(f"refusing {_short(value)}: longer than {MAX_RANGE} items")
        return value

    def _reconstruct(self, reconstruct: Callable) -> Callable:
        def build(subtype: Any, shape: tuple, dtype: Any) -> np.ndarray:
            # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") plus its real state.
            if not isinstance(subtype, _NotCallable) or math.prod(shape) != 0:
                raise self._refused(f"refusing numpy _reconstruct of shape {shape!r} (numpy pickles pass (0,))")
            return reconstruct(_CheckedArray, shape, dtype)

        return build

    def _scalar(self, scalar: Callable) -> Callable:
        def build(dtype: Any, *data: Any) -> Any:
            # Without its data numpy allocates the dtype's full itemsize (e.g. 'U500000000': 2 GB).
            if len(data) != 1:
                raise self._refused("refusing a numpy scalar without its data")
            return scalar(dtype, data[0])

        return build


def _short(value: Any) -> str:
    """A refused argument as shown in the error: a number or range as such, anything else by its type."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"  # str() of a huge int is slow, or refused by Python
    return repr(value) if isinstance(value, (int, float, range, slice)) else type(value).__name__


def _to_plain(obj: Any, done: dict[int, Any] | None = None) -> Any:
    """EasyDicts -> dicts and checked arrays -> ndarrays, nested.

    A pickle can share one list many times over (60 levels of ``[x, x]`` is 2**60 items when copied);
    each object is converted once and stays shared (``done``: id -> converted).
    """
    done = {} if done is None else done
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _CheckedArray):
        out = done[id(obj)] = obj.view(np.ndarray)
        if out.dtype.hasobject:  # its items may be checked arrays too; one at a time, as a list of
            for i, v in enumerate(out.flat):  # equal-length lists assigned at once would be broadcast
                out.flat[i] = _to_plain(v, done)
    elif isinstance(obj, dict):
        out = done[id(obj)] = {}
        out.update((k, _to_plain(v, done)) for k, v in obj.items())
    elif isinstance(obj, list):
        out = done[id(obj)] = []
        out.extend(_to_plain(v, done) for v in obj)
    else:
        out = obj
    return out


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
