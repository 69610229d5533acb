"""The run folder: what a run writes, who may write it, and whether a new run may start in it, resume it or replace it.

A run holds an exclusive lock on its folder (``fcntl.flock`` on ``.lock``, which
holds the owner's pid) from before it looks at the folder until it returns;
the kernel releases it when the process dies, so a killed run never leaves a
stale lock. A second run started into a locked folder, with or without
``--resume`` / ``--overwrite``, stops before touching anything. Under
``torchrun`` rank 0 holds the lock for all ranks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from parlab.errors import ConfigError, RunFolderError
from parlab.training import distributed as dist
from parlab.training.checkpoint import load_checkpoint

RUN_FILES = ("last.pt", "previous.pt", "best.pt", "log.csv", "metrics.json", "config.json",
             "test_per_attribute.csv", "test_predictions.npz", "val_predictions.npz")
EXISTING = ("error", "resume", "overwrite")
LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(out: Path, ctx: dist.DistContext):
    """Hold the folder's lock for the block; a folder another process holds is a :class:`RunFolderError`."""
    handle, holder = None, ""
    if ctx.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            handle, holder = _try_lock(out / LOCK_FILE)
        except OSError as exc:  # every rank must still reach the all-reduce below
            holder = f"none: {exc.strerror or exc}"
    locked = handle is not None or not ctx.is_main
    if ctx.distributed:  # every rank stops if rank 0 could not lock
        flag = torch.tensor([1.0 if locked else 0.0], device=ctx.device)
        locked = bool(dist.all_reduce_mean(flag, ctx).item() == 1.0)
    if not locked:
        if holder.startswith("none: "):
            raise RunFolderError(f"{out}: cannot create or lock the run folder ({holder[6:]})")
        who = f"pid {holder}" if holder else "another process (rank 0 of this run could not lock it)"
        raise RunFolderError(f"{out} is in use by another run ({who}); wait for it to end or choose another "
                             "output_dir")
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock


def _try_lock(path: Path):
    """(open locked file, "") or (None, pid of the holder)."""
    import fcntl

    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        return None, holder
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, ""


def prepare_run_folder(out: Path, existing: str) -> tuple[dict | None, Path | None]:
    """Check a run folder against ``existing``; return the checkpoint to resume from and its path, if any.

    ``existing``: "error" (refuse a folder that holds a run), "resume" (continue from its ``last.pt``,
    or ``previous.pt`` when a kill left only that) or "overwrite" (:func:`clear_run_folder`, once the run's
    inputs have been checked, so that a mistyped input never costs the run it would replace).
    """
    if existing not in EXISTING:
        raise ConfigError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    last, previous = out / "last.pt", out / "previous.pt"
    has_run = last.exists() or previous.exists()
    if has_run and existing == "error":
        raise RunFolderError(
            f"{out} already holds a run; resume it (existing='resume', --resume) or start "
            "again (existing='overwrite', --overwrite)"
        )
    if existing == "resume" and has_run:
        # A kill between the two final renames of save_atomic leaves only previous.pt.
        source = last if last.exists() else previous
        return load_checkpoint(source), source
    return None, None


def clear_run_folder(out: Path, ctx: dist.DistContext, extra_files: tuple[str, ...] = ()) -> None:
    """Delete a run's files and ``extra_files`` for ``existing="overwrite"``; rank 0 deletes.

    The engine passes every registered method's files, so that no file of an earlier run of another
    method survives the overwrite.
    """
    dist.barrier(ctx)
    if ctx.is_main:
        for name in RUN_FILES + extra_files:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    dist.barrier(ctx)
