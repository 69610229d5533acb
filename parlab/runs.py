"""The run folder: what a run writes there, who may write it, and how a finished run is read back.

A run writes one folder (``RunFields.output_dir``):

- ``config.json``: ``method_name`` and the three configs under ``run``, ``data`` and ``method``
  (:mod:`parlab.training.record`), how it selected, the split sizes, the attributes, the library
  versions and ``files``, every file the run writes there (what ``--overwrite`` removes, and nothing
  else). It is a config file too: ``parlab train --config RUN/config.json --output-dir OTHER`` trains
  the same run again;
- ``log.csv``: one row per epoch (train loss, lr, validation loss and metrics, speed, the method's columns);
- ``last.pt`` (+ ``previous.pt``): the full training state after the latest epoch;
- ``best.pt``: the selected epoch's evaluation weights, configs, attributes and thresholds;
- the method's own files (FRDL: ``label_prior.csv``; GOAT: ``flood_levels.csv``);
- ``metrics.json``, ``test_per_attribute.csv``, ``test_predictions.npz``, ``val_predictions.npz``: the
  final evaluation of the selected epoch (:func:`saved_result` reads a finished run back from them).

Every metric a run writes is in percent, as PAR papers report them: ``metrics.json`` says so under
``unit``, ``log.csv``'s metric columns are percent, and ``test_per_attribute.csv`` names its percent
columns with ``(%)`` (its thresholds are probabilities).

A run holds an exclusive lock on its folder (``fcntl.flock`` on ``.lock``, which holds the owner's pid)
from before it looks at the folder until it returns; the kernel releases it when the process dies, so
a killed run never leaves a stale lock. Under ``torchrun`` rank 0 holds the lock for all ranks. A
``.lock`` that is a symbolic link, or a file that is not a lock, is refused, never written through.

A folder holding any of ``last.pt``, ``previous.pt``, ``best.pt`` or ``metrics.json`` holds a run, whatever
else is missing: it is only continued (``existing="resume"``, from ``last.pt`` or ``previous.pt``) or
replaced (``existing="overwrite"``) when asked. What an overwrite deletes goes through
:func:`parlab.files.remove_owned`: the plain names of :func:`written_files`, in the folder, no links.

:func:`open_run` and :func:`collect_runs` give finished runs back for comparison, and :data:`RUNS` names
the folders of the runs the notebooks train, so that notebooks 03-07 and ``parlab.reproduce`` share one
list instead of typed folder names.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from parlab.errors import ConfigError, MissingFileError, RunFolderError
from parlab.files import owned_path, remove_owned, write_atomic, write_json
from parlab.metrics import PARMetrics
from parlab.training import distributed as dist
from parlab.training.checkpoint import check_attributes, load_checkpoint
from parlab.training.config import DataConfig, RunFields
from parlab.training.evaluation import Evaluation, Predictions, load_predictions, save_predictions, split_metrics
from parlab.training.record import method_name_of

CONFIG, LOG, METRICS = "config.json", "log.csv", "metrics.json"
LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
PER_ATTRIBUTE = "test_per_attribute.csv"
TEST_PREDICTIONS, VAL_PREDICTIONS = "test_predictions.npz", "val_predictions.npz"
TENSORBOARD = "tensorboard/"  # a folder: listed with its slash
RUN_FILES = (CONFIG, LOG, LAST, PREVIOUS, BEST, METRICS, PER_ATTRIBUTE, TEST_PREDICTIONS, VAL_PREDICTIONS)
# What a folder of the first layout (before config.json listed its files) may hold beyond RUN_FILES.
LAYOUT1_FILES = ("label_prior.csv", "flood_levels.csv", TENSORBOARD)
EXISTING = ("error", "resume", "overwrite")
LOCK_FILE = ".lock"
UNIT = "percent"
# Columns of test_per_attribute.csv that are metrics (written in percent and named so); the rest are
# counts and thresholds.
PERCENT_COLUMNS = ("positive_ratio", "tpr", "tnr", "ma", "precision", "recall", "f1", "tuned_tpr", "tuned_tnr")

# The runs the notebooks train, by label: their folder under runs_dir, with {seed} where a label has one
# run per seed. Notebooks 03-07 and parlab.reproduce name runs through it.
PROMPTPAR_COMPONENTS = ("use_div", "use_vismask", "use_GL", "use_textprompt", "use_mm_former")
RUNS: dict[str, str] = {
    "baseline BCE": "baseline_bce",
    "baseline weighted BCE": "baseline_weighted",
    "FRDL stage 1": "frdl_stage1",
    "FRDL stage 1 + logit BN": "frdl_stage1_logit_bn",
    "FRDL": "frdl_seed{seed}",
    "FRDL+GOAT": "frdl_goat_seed{seed}",
    "PromptPAR": "promptpar_seed{seed}",
    "PromptPAR with logit BN": "promptpar_logit_bn_seed{seed}",  # the paper's BatchNorm on the main logits
    "CLIP fine-tuned": "clip_finetuned_seed{seed}",  # PromptPAR's CLIP image tower trained end to end, linear head
    **{f"PromptPAR without {c}": f"promptpar_{c}_seed{{seed}}" for c in PROMPTPAR_COMPONENTS},
    "PromptPAR twice the epochs": "promptpar_long_seed{seed}",  # the same recipe, its schedule twice as long
}


def run_dir(runs_dir: str | Path, label: str, seed: int | None = None) -> Path:
    """The folder of the run ``label`` of :data:`RUNS` under ``runs_dir``.

    ``seed``: the run's seed, needed where the label has one run per seed (ignored where it has one run).
    """
    pattern = _pattern(label)
    if "{seed}" in pattern and seed is None:
        raise ConfigError(f"run {label!r}: a seed is needed (its folders are {pattern!r})")
    return Path(runs_dir) / pattern.format(seed=seed)


def _pattern(label: str) -> str:
    if label not in RUNS:
        raise ConfigError(f"unknown run {label!r}; known runs: {', '.join(RUNS)}")
    return RUNS[label]


# --- who may write the folder


@contextlib.contextmanager
def run_folder_lock(out: Path, ctx: dist.DistContext):
    """Hold the folder's lock for the block; a folder another process holds is a :class:`RunFolderError`."""
    handle, holder, refused = None, "", None
    if ctx.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            handle, holder = _try_lock(out / LOCK_FILE)
        except RunFolderError as exc:  # a .lock parlab did not write; every rank must still reach the all-reduce
            refused = exc
        except OSError as exc:
            holder = f"none: {exc.strerror or exc}"
    locked = handle is not None or not ctx.is_main
    if ctx.distributed:  # every rank stops if rank 0 could not lock
        flag = torch.tensor([1.0 if locked else 0.0], device=ctx.device)
        locked = bool(dist.all_reduce_mean(flag, ctx).item() == 1.0)
    if not locked:
        if refused is not None:
            raise refused
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
    """(open locked file, "") or (None, pid of the holder); a ``.lock`` that is not a lock is a :class:`RunFolderError`.

    The file is opened without following a link (the ``.lock`` of a shared or downloaded run folder may point
    anywhere) and rewritten only when it is a lock: empty, or the pid an earlier run wrote there.
    """
    import fcntl
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if path.is_symlink():  # ELOOP (EMLINK on some BSDs)
            raise RunFolderError(f"{path} is a symbolic link; a run locks its folder with a .lock file of its own: "
                                 "remove the link (what it points to is left untouched)") from None
        raise
    handle = os.fdopen(fd, "rb+")  # noqa: SIM115 (held open for the whole run)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFolderError(f"{path} is not a plain file, so not a run's lock; remove it yourself")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read(64).decode(errors="replace").strip() or "unknown"
            handle.close()
            return None, holder
        held = handle.read(65).strip()
        if held and not (held.isdigit() and len(held) <= 20):
            raise RunFolderError(f"{path} is not a run's lock (a run writes only its pid there); remove it "
                                 "yourself to run in this folder")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
    except BaseException:
        handle.close()
        raise
    return handle, ""


def prepare_run_folder(out: Path, existing: str) -> tuple[dict | None, Path | None]:
    """Check a run folder against ``existing``; return the checkpoint to resume from and its path, if any.

    ``existing``: "error" (refuse a folder that holds a run: any of ``last.pt``, ``previous.pt``, ``best.pt``,
    ``metrics.json``), "resume" (continue from its ``last.pt``, or ``previous.pt`` when a kill left only
    that; a run with neither is refused, finished or not: there is nothing to continue from) or "overwrite"
    (:func:`clear_run_folder`, once the run's inputs have been checked, so that a mistyped input never costs
    the run it would replace; a link among the files it would delete is refused now, before any is).
    """
    if existing not in EXISTING:
        raise ConfigError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    # Any of them is a run: people delete last.pt (three times best.pt) from finished runs.
    has_run = any(os.path.lexists(out / name) for name in (LAST, PREVIOUS, BEST, METRICS))
    if has_run and existing == "error":
        raise RunFolderError(
            f"{out} already holds a run; resume it (existing='resume', --resume) or start "
            "again (existing='overwrite', --overwrite)"
        )
    if existing == "resume" and has_run:
        # A kill between the two final renames of save_atomic leaves only previous.pt.
        for source in (out / LAST, out / PREVIOUS):
            if source.exists():
                return load_checkpoint(source), source
        if run_finished(out) and (out / BEST).exists():
            raise RunFolderError(f"{out}: the run is finished and its last.pt is gone, so it cannot be continued or "
                                 "re-evaluated; read its results with parlab.runs.open_run, or start again "
                                 "(existing='overwrite', --overwrite)")
        raise RunFolderError(f"{out}: the run's last.pt and previous.pt are gone, so it cannot be resumed; start "
                             "again (existing='overwrite', --overwrite) or choose another output_dir")
    if existing == "overwrite":  # all checked before anything is deleted (clear_run_folder)
        for name in written_files(out):
            path = owned_path(out / name, out, marker=None)
            if path.is_dir() and not name.endswith("/"):
                raise RunFolderError(f"{path} is a folder where a run writes a file; remove it yourself")
    return None, None


def written_files(out: Path) -> tuple[str, ...]:
    """The files the run in ``out`` wrote: those its ``config.json`` lists, with :data:`RUN_FILES`.

    A ``config.json`` of the first layout lists none: then every file a run of that layout could write.
    Only plain names in the folder count, so that no record can name a file elsewhere.
    """
    listed: tuple[str, ...] = LAYOUT1_FILES
    try:
        record = json.loads((out / CONFIG).read_text())
        if isinstance(record, dict) and "files" in record:
            listed = tuple(str(name) for name in record["files"])
    except (OSError, ValueError):  # no readable record: the standard files only
        listed = ()
    plain = [name for name in listed if name.rstrip("/") and "/" not in name.rstrip("/")
             and name.rstrip("/") not in (".", "..")]
    return tuple(dict.fromkeys(RUN_FILES + tuple(plain)))


def clear_run_folder(out: Path, ctx: dist.DistContext) -> None:
    """Delete the files the run in ``out`` wrote (:func:`written_files`) for ``existing="overwrite"``; rank 0 deletes."""
    dist.barrier(ctx)
    if ctx.is_main:
        for name in written_files(out):
            remove_owned(out / name, out, marker=LOCK_FILE)  # this run holds the folder's lock
    dist.barrier(ctx)


# --- what the run writes


def run_files(extra_files: tuple[str, ...], tensorboard: bool) -> list[str]:
    """``config.json``'s ``files``: what a run of a method with ``extra_files`` writes."""
    return list(RUN_FILES + tuple(extra_files) + ((TENSORBOARD,) if tensorboard else ()))


def write_record(out: Path, record: dict) -> None:
    """Write ``config.json``."""
    write_json(out / CONFIG, record)


def write_results(out: Path, evaluation: Evaluation, selection: str, best_epoch: int, epochs: int,
                  world_size: int, wall_s: float) -> None:
    """``metrics.json``, ``test_per_attribute.csv`` and the validation and test predictions of a finished run."""
    test, tuned, thresholds = evaluation.test, evaluation.test_tuned, evaluation.thresholds
    results = {
        "unit": UNIT, "selection": selection, "best_epoch": best_epoch, "epochs": epochs,
        "val": evaluation.val.summary(), "test": test.summary(),
        "test_tuned_thresholds": None if tuned is None else tuned.summary(),
        "thresholds": None if thresholds is None else thresholds.tolist(),
        "num_degenerate_test": test.num_degenerate, "world_size": world_size, "wall_s_this_call": wall_s,
    }
    write_json(out / METRICS, results)
    table = test.per_attribute.copy()
    if tuned is not None:
        table["tuned_threshold"] = thresholds
        table["tuned_tpr"], table["tuned_tnr"] = tuned.per_attribute["tpr"], tuned.per_attribute["tnr"]
    write_atomic(out / PER_ATTRIBUTE, percent_table(table).to_csv)
    save_predictions(out / TEST_PREDICTIONS, evaluation.test_preds)
    save_predictions(out / VAL_PREDICTIONS, evaluation.val_preds)  # last: its presence marks complete results


def percent_table(per_attribute: pd.DataFrame) -> pd.DataFrame:
    """A per-attribute table of fractions (as :class:`~parlab.metrics.PARMetrics` keeps it) in percent, named so."""
    columns = [c for c in PERCENT_COLUMNS if c in per_attribute]
    table = per_attribute.copy()
    table[columns] = 100 * table[columns]
    return table.rename(columns={c: f"{c} (%)" for c in columns})


# --- reading a finished run back


@dataclass(frozen=True)
class RunResult:
    """What a finished run returns (everything is also on disk in ``output_dir``)."""

    output_dir: Path
    run: RunFields
    data: DataConfig
    method: Any  # the method's own config
    history: pd.DataFrame  # one row per epoch, as in log.csv
    best_epoch: int  # 1-based
    selection: str  # how the epoch was selected (for results tables)
    val: PARMetrics  # validation split at the selected epoch, fixed threshold
    test: PARMetrics  # test split, fixed threshold
    test_tuned: PARMetrics | None  # test split, per-attribute thresholds tuned on validation
    thresholds: np.ndarray | None  # (A,) tuned thresholds
    wall_s: float  # wall time of this call
    method_name: str = "baseline"  # what trained it: "baseline", "FRDL", "FRDL+GOAT", ...
    model_config: Any = None  # the config describing the evaluation model (FRDL: its stage 1's)


def run_finished(folder: str | Path) -> bool:
    """True when ``folder`` holds a run that wrote its final results."""
    return (Path(folder) / METRICS).is_file() and (Path(folder) / CONFIG).is_file()


def read_record(folder: str | Path) -> dict:
    """A run's ``config.json`` as written (any layout); a missing or broken one is a one-line error."""
    path = Path(folder) / CONFIG
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: not found; no run was started in this folder") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: cannot read this run record ({exc})") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path}: not a run record (a mapping)")
    return record


def saved_result(task, out: Path, attributes: list[str]) -> RunResult | None:
    """The :class:`RunResult` of the finished run of ``task`` in ``out``, from the files :func:`write_results` wrote.

    The same numbers as re-evaluating its ``best.pt`` (those files are that evaluation), without building
    the model. ``attributes``: the run's, checked against its dataset's. None when the folder lacks
    validation predictions (runs of earlier versions), when its results are of another schedule than
    ``task``'s (a finished run continued for more epochs), or when the predictions do not give the
    metrics ``metrics.json`` recorded (a finish killed while writing them, or files of another run).
    """
    start_time = time.perf_counter()
    results = json.loads((out / METRICS).read_text())
    if not (out / VAL_PREDICTIONS).is_file() or results.get("epochs") != task.run.epochs:
        return None
    data = task.data
    annotations = data.annotations()
    check_attributes(attributes, annotations.attributes, str(out / CONFIG), annotations.name)
    val_preds, test_preds = (load_predictions(out / name, len(annotations.labels), annotations.num_attributes)
                             for name in (VAL_PREDICTIONS, TEST_PREDICTIONS))
    thresholds = None if results["thresholds"] is None else np.asarray(results["thresholds"], dtype=np.float64)
    val, test = (split_metrics(annotations, preds, data.threshold) for preds in (val_preds, test_preds))
    tuned = None if thresholds is None else split_metrics(annotations, test_preds, thresholds)
    recorded = (results["val"], results["test"], results["test_tuned_thresholds"])
    if any((m is None) != (r is None) or (m is not None and not _same_summary(m.summary(), r))
           for m, r in zip((val, test, tuned), recorded)):
        return None
    return result_of(task, out, pd.read_csv(out / LOG), results["best_epoch"], results["selection"], val, test,
                     tuned, thresholds, time.perf_counter() - start_time)


def result_of(task, out: Path, history: pd.DataFrame, best_epoch: int, selection: str, val: PARMetrics,
              test: PARMetrics, tuned: PARMetrics | None, thresholds: np.ndarray | None, wall_s: float) -> RunResult:
    """The :class:`RunResult` of ``task``'s run in ``out`` with these results."""
    return RunResult(out, task.run, task.data, task.method, history, best_epoch, selection, val, test, tuned,
                     thresholds, wall_s, task.name, task.model_config)


def _same_summary(computed: dict, recorded: dict) -> bool:
    """Metrics computed now equal those a ``metrics.json`` recorded (JSON keeps floats exactly; NaN is NaN)."""
    return computed.keys() == recorded.keys() and all(
        np.isclose(computed[k], recorded[k], rtol=0.0, atol=1e-9, equal_nan=True) for k in computed)


def open_run(folder: str | Path, device: str = "auto", progress: bool = False, reevaluate: bool = False) -> RunResult:
    """The :class:`RunResult` of the finished run in ``folder``; nothing is retrained.

    Read from the validation and test predictions the run saved; a run without them (written by an earlier
    parlab), or any run with ``reevaluate``, is re-evaluated from its ``best.pt`` on ``device`` instead (which
    also saves them). A run opens from wherever its folder is now.
    """
    from parlab.methods.registry import method_for
    from parlab.training.engine import fit

    folder = Path(folder)
    if not run_finished(folder):
        raise MissingFileError(f"{folder}: no finished run here (metrics.json is written when a run ends); "
                               "train it, or resume it with existing='resume'")
    record = read_record(folder)
    task = method_for(method_name_of(record)).task_class().from_record(record, str(folder / CONFIG))
    task.run = replace(task.run, output_dir=str(folder), device=device)  # where it is now, on the device asked for
    saved = None if reevaluate else saved_result(task, folder, record["attributes"])
    return saved or fit(task, existing="resume", progress=progress, log=lambda *_: None)


def collect_runs(runs_dir: str | Path, labels: list[str] | tuple[str, ...] | None = None,
                 device: str = "auto") -> dict[str, list[RunResult]]:
    """The finished runs of ``runs_dir`` per label of :data:`RUNS` (all of them by default).

    Repeated runs (seeds) share a label, in seed order. Labels with no finished run are left out.
    """
    found = {}
    for label in RUNS if labels is None else labels:
        pattern = _pattern(label).replace("{seed}", "*")
        folders = sorted((f for f in Path(runs_dir).glob(pattern) if f.is_dir() and run_finished(f)),
                         key=lambda f: (len(f.name), f.name))  # seed10 after seed9
        if "{seed}" in _pattern(label):  # "promptpar_seed*" must not take "promptpar_use_div_seed0"
            prefix, suffix = _pattern(label).split("{seed}")
            folders = [f for f in folders if f.name.removeprefix(prefix).removesuffix(suffix).isdigit()]
        if folders:
            found[label] = [open_run(f, device=device) for f in folders]
    return found


def saved_test_predictions(run: RunResult | str | Path) -> Predictions:
    """The test predictions a finished run saved (``run``: its result or its folder)."""
    folder = Path(run) if isinstance(run, (str, Path)) else Path(run.output_dir)
    return load_predictions(folder / TEST_PREDICTIONS)


def label_prior(run: RunResult | str | Path) -> pd.DataFrame:
    """Positive fraction of the labels an FRDL run's heads trained on, per epoch (rows) and attribute.

    The first column, ``balanced``, says whether the epoch drew balanced batches from the bank.
    """
    folder = Path(run) if isinstance(run, (str, Path)) else Path(run.output_dir)
    path = folder / "label_prior.csv"
    if not path.is_file():
        raise MissingFileError(f"{path}: not found; only FRDL runs record the label prior of their heads")
    return pd.read_csv(path, index_col="epoch")
