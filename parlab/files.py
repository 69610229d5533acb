"""Atomic file writes: a temporary file in the target folder, then a rename.

A run killed mid-write leaves the previous file (or none), never half of one.
Its half-written temporary file, ``.{name}.tmp-{pid}-{random}{suffix}``, is
removed by the next write to the same path once that process is gone.

The notebooks' outputs go through the same writes: figures as PDF (TrueType
fonts) + PNG (:func:`save_figure`), tables as CSV (:func:`save_table`).
matplotlib and pandas are imported by those functions only: the command line
imports this module, and its ``--help`` stays fast.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

_TMP_PREFIX = ".{name}.tmp-"  # then the writer's process id, "-", mkstemp's random part, the suffix
PNG_DPI = 300  # print resolution of the PNG copies; the PDF stays vector


def write_atomic(path: str | Path, write: Callable[[str], None], previous: str | Path | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename the result onto ``path``.

    ``previous``: where the file being replaced is moved, just before the rename, so that the
    moment with neither file in place is two renames long, not the whole write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # The suffix stays last: savefig and to_csv choose the format/compression from it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX.format(name=path.name)}{os.getpid()}-",
                               suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:  # on disk before the rename, so a crash cannot leave an empty file
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of writes to ``path`` by processes that no longer run; return them.

    Only this machine's process ids can be checked: a file whose process id is alive here (or whose
    name does not parse) is left alone. A reused process id only delays the removal.
    """
    path = Path(path)
    prefix = _TMP_PREFIX.format(name=path.name)
    removed = []
    if os.name != "posix" or not path.parent.is_dir():  # os.kill(pid, 0) is a real kill on Windows
        return removed
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                tmp.unlink()
            except OSError:  # gone already, or not a plain file: not ours to force
                continue
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> Path:
    """``obj`` as indented JSON (NumPy scalars become floats)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=float)))



def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (CLIP weights files are up to a few GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_figure(fig: Figure, name: str, folder: str | Path = "figures") -> list[Path]:
    """Write ``fig`` as ``folder/name.pdf`` and ``folder/name.png``; return both paths."""
    import matplotlib

    folder = Path(folder)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    # Type 42 embeds TrueType fonts, which journals accept and editors can read.
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        write_atomic(paths[0], lambda tmp: fig.savefig(tmp, format="pdf", bbox_inches="tight"))
        write_atomic(paths[1], lambda tmp: fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight"))
    return paths


def save_table(table: pd.DataFrame, name: str, folder: str | Path = "figures") -> Path:
    """Write ``table`` as ``folder/name.csv``; return the path."""
    path = Path(folder) / f"{name}.csv"
    write_atomic(path, lambda tmp: table.to_csv(tmp))
    return path
