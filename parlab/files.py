"""Atomic file writes (a temporary file in the target folder, then a rename), and deletes only of what parlab made.

A run killed mid-write leaves the previous file (or none), never half of one.
Its half-written temporary file, ``.{name}.tmp-{pid}-{random}{suffix}``, is
removed by the next write to the same path once that process is gone.

The notebooks' outputs go through the same writes: figures as PDF (TrueType
fonts) + PNG (:func:`save_figure`), tables as CSV (:func:`save_table`).
matplotlib and pandas are imported by those functions only: the command line
imports this module, and its ``--help`` stays fast.

parlab deletes nothing it did not write. Every delete in a run folder or a folder parlab generates (a
dataset, a caption corpus, an image cache, their temporary siblings) goes through :func:`remove_owned`,
which refuses a path outside the folder that owns it, a path reached through a symbolic link, and an owner
folder without its marker: :data:`MARKER` for the folders parlab generates (written by
:func:`make_owned_folder` before anything else), the held ``.lock`` for a run folder. A folder is only
ever replaced when it is missing, empty, or marked (:func:`check_replaceable`).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from parlab.errors import DiskFullError, NotOwnedError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# Free bytes under which a failed write is put down to a full disk: torch.save reports one as a RuntimeError
# ("unexpected pos ...") without the system's error number.
FULL_DISK_BYTES = 1 << 20
_TMP_PREFIX = ".{name}.tmp-"  # then the writer's process id, "-", mkstemp's random part, the suffix
PNG_DPI = 300  # print resolution of the PNG copies; the PDF stays vector
MARKER = ".parlab"  # in a folder parlab generated (and so may replace or delete): {"made_by": "parlab", "what": ...}


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
    except BaseException as exc:
        full = isinstance(exc, Exception) and _disk_full(exc, path.parent)  # measured before the temporary goes
        remove_owned(tmp, path.parent, marker=None)  # made by mkstemp above
        if full:
            kept = f"{path} is intact" if path.exists() else f"{path} was not written"
            error = DiskFullError(f"no space left on the device of {path.parent}; {kept} (files are replaced only "
                                  "once written whole)")
            error.errno = errno.ENOSPC
            raise error from None
        raise
    return path


def _disk_full(exc: Exception, folder: Path) -> bool:
    """Whether the write that raised ``exc`` in ``folder`` ran out of space (or of the user's quota)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


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
        if pid.isdigit() and not _alive(int(pid)) and tmp.is_file() and not tmp.is_symlink():
            try:  # the name (our prefix, a dead writer's pid) is what makes it ours
                remove_owned(tmp, path.parent, marker=None)
            except OSError:  # gone already: not ours to force
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


def mark_owned(folder: str | Path, what: str) -> Path:
    """Write :data:`MARKER` in ``folder``: parlab made it (``what``: "SynthPA" ...), so it may replace it."""
    path = Path(folder) / MARKER
    path.write_text(json.dumps({"made_by": "parlab", "what": what}) + "\n")
    return path


def is_owned(folder: str | Path, marker: str = MARKER) -> bool:
    """True when ``folder`` holds ``marker`` as a plain file (not a link to one)."""
    sign = Path(folder) / marker
    return sign.is_file() and not sign.is_symlink()


def owned_path(path: str | Path, owner_folder: str | Path, marker: str | None = MARKER) -> Path:
    """``path`` (absolute) once checked to be parlab's to delete; a :class:`NotOwnedError` otherwise.

    It must be ``owner_folder`` or inside it, reached without a symbolic link (``path`` itself included), and
    ``owner_folder`` must hold ``marker`` (None: the caller knows the folder is parlab's, as a run holding
    its run folder's lock, or a temporary file's name with a dead writer's pid).
    """
    path, owner = Path(os.path.abspath(path)), Path(os.path.abspath(owner_folder))
    try:
        inside = path.relative_to(owner).parts
    except ValueError:
        raise NotOwnedError(f"{path}: outside {owner}, the folder parlab owns; not deleted") from None
    steps = [owner.joinpath(*inside[:k]) for k in range(1, len(inside) + 1)] or [owner]
    for step in steps:
        if step.is_symlink():
            raise NotOwnedError(f"{step} is a symbolic link; parlab deletes no link it did not make: remove it "
                                "yourself")
    if marker is not None and not is_owned(owner, marker):
        raise NotOwnedError(f"{owner}: parlab did not make this folder (no {marker} in it); nothing in it is "
                            "deleted: remove it yourself")
    if not path.resolve().is_relative_to(owner.resolve()):  # cannot happen without a link; checked all the same
        raise NotOwnedError(f"{path}: resolves outside {owner}, the folder parlab owns; not deleted")
    return path


def remove_owned(path: str | Path, owner_folder: str | Path, marker: str | None = MARKER) -> bool:
    """Delete the file or folder ``path`` once :func:`owned_path` allows it; False when there was nothing.

    This is the one delete of parlab's run folders and generated folders.
    """
    path = owned_path(path, owner_folder, marker)
    if not os.path.lexists(path):
        return False
    if path.is_dir():  # not a link: owned_path refused those
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def check_replaceable(folder: str | Path, what: str, made_before: Callable[[Path], bool] | None = None) -> None:
    """Check that ``folder`` may be replaced by a new ``what``: it is missing, an empty folder, or one parlab made.

    ``made_before(folder)``: recognises a ``what`` of a parlab that wrote no :data:`MARKER` (by its manifest);
    such a folder is marked now. Anything else is a :class:`NotOwnedError` naming the folder.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if folder.is_dir() and not folder.is_symlink():
        if not any(folder.iterdir()):
            return
        if not is_owned(folder) and made_before is not None and made_before(folder):
            mark_owned(folder, what)
        if is_owned(folder):
            old = _old(folder)  # where replace_folder moves it: checked now, not after the build
            if os.path.lexists(old) and not is_owned(old):
                raise NotOwnedError(f"{old} is in the way of replacing {folder.name} and parlab did not make it "
                                    f"(no {MARKER} in it); move or remove it yourself")
            return
    if folder.is_symlink():
        raise NotOwnedError(f"{folder} is a symbolic link, and parlab replaces no link; choose an empty or new "
                            "folder, or remove the link yourself")
    kind = "not empty" if folder.is_dir() else "not a folder"
    raise NotOwnedError(f"{folder} is {kind} and not a {what} parlab made (no {MARKER} in it); choose an empty or "
                        "new folder, or remove this one yourself")


def make_owned_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` afresh and mark it as parlab's (a build's temporary folder).

    A marked folder already there (an interrupted build's) is removed first; anything else is refused.
    """
    folder = Path(folder)
    _remove_leftover(folder)
    folder.mkdir(parents=True)
    mark_owned(folder, what)
    return folder


def _old(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def _remove_leftover(folder: Path) -> None:
    """Delete ``folder`` when it is parlab's (a marked leftover of an interrupted build); refuse anything else."""
    if not os.path.lexists(folder):
        return
    if not is_owned(folder):
        raise NotOwnedError(f"{folder} is in the way and parlab did not make it (no {MARKER} in it); move or "
                            "remove it yourself")
    remove_owned(folder, folder)


def replace_folder(built: str | Path, folder: str | Path, what: str) -> Path:
    """Move the complete marked folder ``built`` onto ``folder``, replacing it if :func:`check_replaceable` allows.

    The replaced folder goes to ``FOLDER.old`` (which must be missing or parlab's) for the two renames, then
    is deleted.
    """
    built, folder = Path(built), Path(folder)
    check_replaceable(folder, what)
    if not os.path.lexists(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        built.rename(folder)
    elif not is_owned(folder):  # an empty folder: rmdir removes nothing else, should a file arrive meanwhile
        folder.rmdir()
        built.rename(folder)
    else:
        old = _old(folder)
        _remove_leftover(old)
        folder.rename(old)
        built.rename(folder)
        try:
            remove_owned(old, old)
        except OSError:  # left over: marked, so the next replace removes it
            pass
    return folder


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
