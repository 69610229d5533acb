"""Checkpoints: atomic writes, safe loading, strict state-dict checks.

A checkpoint is a plain dict of tensors and numbers, written to a temporary
file in the same folder and renamed into place, so a run killed while writing
never leaves a half-written ``last.pt``. The checkpoint it replaces is kept as
``previous.pt``. Loading always uses ``torch.load(weights_only=True)``: a
checkpoint cannot run code.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from parlab._version import __version__
from parlab.errors import ParlabError
from parlab.files import write_atomic

FORMAT = "parlab-checkpoint/1"


class CheckpointError(ParlabError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model/dataset."""


@functools.lru_cache(maxsize=1)  # written into every checkpoint; they cannot change within a process
def library_versions() -> dict[str, str]:
    import numpy
    import timm

    return {
        "parlab": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that weights_only loading refuses
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def save_atomic(obj: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Write ``obj`` to ``path`` atomically; with ``keep_previous`` the old file becomes ``previous.pt``.

    A kill between the two final renames leaves only ``previous.pt``, which resuming falls back to.
    """
    path = Path(path)
    previous = path.with_name("previous.pt") if keep_previous else None

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # closed here when torch.save fails (a full disk), not when collected
            torch.save(obj, fh)

    return write_atomic(path, write, previous=previous)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive; parlab never writes the legacy format
# Words of torch's weights_only refusals that are about what the pickle asks for (a global, a class),
# as opposed to a stream that is not a valid pickle at all ("Unsupported operand ...").
_CODE_REFUSALS = ("GLOBAL", "add_safe_globals", "allowlisted")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a parlab checkpoint with ``weights_only=True``; a damaged file is a :class:`CheckpointError`.

    Three refusals, each one line: not a checkpoint or damaged (random bytes, a truncated or corrupt
    archive; for ``last.pt`` the message points to ``previous.pt``), asks for objects that could run
    code, or a readable file that is not a parlab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_ZIP_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if magic != _ZIP_MAGIC:
        raise _damaged(path, "not a torch.save zip archive")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if not any(word in text for word in _CODE_REFUSALS):
            raise _damaged(path, _reason(text)) from None
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, which could run code "
            f"when loaded ({_reason(text)})"
        ) from None
    except Exception as exc:  # RuntimeError, EOFError, OSError, KeyError, UnicodeDecodeError ... of a damaged file
        raise _damaged(path, _reason(str(exc), type(exc).__name__)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a parlab checkpoint (expected format {FORMAT!r})")
    return ckpt


def _reason(text: str, default: str = "") -> str:
    """The telling sentence of a torch error, without torch's generic weights_only advice around it."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    marker = "WeightsUnpickler error:"
    lines = [ln.split(marker, 1)[1].strip() if marker in ln else ln for ln in lines]
    generic = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    telling = [ln for ln in lines if ln and not ln.startswith(generic)]
    return (telling or lines or [default])[0].split(". ")[0][:200]


def _damaged(path: Path, reason: str) -> CheckpointError:
    """The error for a file that is not a readable checkpoint archive.

    Only ``last.pt`` has an older copy: ``previous.pt`` is the ``last.pt`` before it, not a best model,
    so a damaged ``best.pt`` (or any other file) must not send the user there.
    """
    hint = ""
    previous = path.with_name("previous.pt")
    if path.name == "last.pt" and previous.is_file():
        hint = f"; the previous checkpoint {previous} is untouched, resume from it instead"
    return CheckpointError(f"{path}: truncated or damaged checkpoint, or not a parlab checkpoint ({reason}){hint}")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: the identity of a set of weights.

    Unlike a digest of the checkpoint file, it does not change when the same weights are saved again
    (``torch.save`` writes a fresh serialization id each time).
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().reshape(-1).contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(state[key].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_dict_difference(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 8) -> list[str]:
    """Readable lines for missing keys, unexpected keys and shape mismatches (empty when they fit)."""
    own = model.state_dict()
    lines = []

    def show(title: str, items: list[str]) -> None:
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            lines.append(f"{title}: {', '.join(items[:limit])}{more}")

    show("missing in checkpoint", [k for k in own if k not in state])
    show("unexpected in checkpoint", [k for k in state if k not in own])
    show(
        "shape mismatch",
        [
            f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ],
    )
    return lines


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable error listing the differences."""
    diff = state_dict_difference(model, state)
    if diff:
        raise CheckpointError(f"{source}: weights do not fit the model:\n  " + "\n  ".join(diff))
    model.load_state_dict(state, strict=True)


def check_attributes(checkpoint_attributes: list[str], dataset_attributes: tuple[str, ...] | list[str],
                     checkpoint: str, dataset: str) -> None:
    """Raise when a checkpoint's attributes differ from the dataset's (count or names)."""
    ck, ds = list(checkpoint_attributes), list(dataset_attributes)
    if len(ck) != len(ds):
        raise CheckpointError(
            f"{checkpoint} predicts {len(ck)} attributes but dataset {dataset} has {len(ds)}; "
            "evaluate it on the dataset it was trained on"
        )
    if ck != ds:
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(ck, ds)) if a != b][:5]
        raise CheckpointError(
            f"{checkpoint}: attribute names differ from dataset {dataset} (checkpoint vs dataset): "
            + "; ".join(diff)
        )
