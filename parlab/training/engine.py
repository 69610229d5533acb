"""The training engine: one loop, :func:`fit`, for every method's :class:`~parlab.training.task.Task`.

A run writes one folder (``output_dir``):

- ``config.json``: the resolved config, the method and its config, seed, world size, device, split
  note and library versions;
- ``log.csv``: one row per epoch (train loss, lr, validation loss and mA/Acc/Prec/Rec/F1, speed, and
  the method's own columns);
- ``last.pt`` (+ ``previous.pt``): the full training state after the latest epoch;
- ``best.pt``: the selected epoch's evaluation weights, config, attributes and thresholds;
- ``metrics.json``, ``test_per_attribute.csv``, ``test_predictions.npz``, ``val_predictions.npz``: the
  final evaluation of the selected epoch (:func:`saved_result` reads a finished run back from them).

The loop is small named steps: :func:`train_one_epoch` (seeding, the task's batches and steps,
:func:`optimizer_step`, the NaN guard), :func:`validate`, :func:`select_and_save` and
:func:`finish`. Resuming (``existing="resume"``) restores weights, optimiser, scheduler, EMA,
scaler, RNG states and the task's :meth:`~parlab.training.task.Task.extra_state` from
``last.pt``; since every epoch's order and augmentation depend only on (seed, epoch), a resumed
run ends bit-identical to an uninterrupted one on the CPU. The same code runs under ``torchrun``
with DistributedDataParallel; rank 0 writes every file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from parlab.data import load_dataset
from parlab.data.image_cache import build_image_cache, open_image_cache
from parlab.errors import ConfigError, ParlabError
from parlab.files import write_atomic, write_json
from parlab.labelstats import positive_ratio
from parlab.methods.registry import every_method_files
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.training import distributed as dist
from parlab.training.checkpoint import FORMAT, check_attributes, library_versions, load_checkpoint, save_atomic
from parlab.training.config import TrainConfig
from parlab.training.evaluation import Predictions, load_predictions, save_predictions
from parlab.training.optim import load_optimizer_state
from parlab.training.run_folder import clear_run_folder, prepare_run_folder, run_folder_lock
from parlab.training.runlog import RunLog
from parlab.training.sampling import epoch_seed
from parlab.training.seeding import rng_state, seed_everything, set_rng_state
from parlab.training.splits import resolve_splits
from parlab.training.task import RunData, SupervisedTask, Task
from parlab.training.thresholds import tune_thresholds

METRIC_KEYS = ("ma", "acc", "prec", "rec", "f1")
LOSS_READ_EVERY = 25  # training steps between reads of the loss on a GPU (the NaN guard's granularity there)


class TrainingDiverged(ParlabError, RuntimeError):
    """The loss became NaN or infinite; names the step, the batch and the last good checkpoint."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run returns (everything is also on disk in ``output_dir``)."""

    output_dir: Path
    config: TrainConfig  # the data and model (for FRDL: the stage-1 run's, with this run's root)
    history: pd.DataFrame  # one row per epoch, as in log.csv
    best_epoch: int  # 1-based
    selection: str  # how the epoch was selected (for results tables)
    val: PARMetrics  # validation split at the selected epoch, fixed threshold
    test: PARMetrics  # test split, fixed threshold
    test_tuned: PARMetrics | None  # test split, per-attribute thresholds tuned on validation
    thresholds: np.ndarray | None  # (A,) tuned thresholds
    wall_s: float  # wall time of this call
    method: str = "baseline"  # what trained it: "baseline", "FRDL", "FRDL+GOAT", ...
    method_config: Any = None  # the method's own config (config above describes data and model)


@dataclass
class Progress:
    """Where a run stands: epochs done, the selected one so far, one row per epoch."""

    epoch: int = 0
    best: dict = field(default_factory=lambda: {"epoch": 0, "value": -np.inf})
    history: list[dict] = field(default_factory=list)


def train(config: TrainConfig, existing: str = "error", progress: bool = True, log=None) -> RunResult:
    """Train the baseline of ``config``, select on validation, test once (see the module docstring)."""
    return fit(SupervisedTask(config), existing, progress, log)


def fit(task: Task, existing: str = "error", progress: bool = True, log=None) -> RunResult:
    """Run ``task`` to the end of its schedule and evaluate the selected epoch.

    Args:
        task: the method and its configs.
        existing: what to do when ``output_dir`` already holds a run: "error", "resume" (continue from
            its last checkpoint; a finished run is only re-evaluated) or "overwrite".
        progress: tqdm bars per epoch (rank 0 only).
        log: where the one-line-per-epoch summary goes (default: printed and flushed, so that
            redirected output of long runs shows each epoch as it ends).
    """
    return launch(lambda line_log, ctx: _fit(task, existing, progress, line_log, ctx), task.run.device, log)


def launch(body, device: str, log=None):
    """Join the process group (under torchrun), run ``body(log, ctx)``, leave it again.

    Only rank 0 logs; ``log=None`` prints each line flushed.
    """
    ctx = dist.setup(device)
    if not ctx.is_main:
        log = lambda *_: None  # noqa: E731
    elif log is None:
        log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        return body(log, ctx)
    finally:
        dist.teardown(ctx)


def _fit(task: Task, existing: str, progress: bool, log, ctx: dist.DistContext) -> RunResult:
    out = Path(task.run.output_dir)
    with run_folder_lock(out, ctx):
        return _fit_locked(task, existing, progress, log, ctx, out)


def _fit_locked(task: Task, existing: str, progress: bool, log, ctx: dist.DistContext, out: Path) -> RunResult:
    start_time = time.perf_counter()
    resume, source = prepare_run_folder(out, existing)
    task.start(ctx)
    if resume is not None:
        resume = task.upgrade_checkpoint(resume)
        task.check_resume(resume, str(source))
    data = load_run_data(task.data_config, task.run.image_cache, ctx)
    if resume is not None:
        check_attributes(resume["attributes"], data.annotations.attributes, str(source), data.annotations.name)
    if existing == "overwrite":  # only now that the inputs read
        clear_run_folder(out, ctx, tuple(sorted(set(task.extra_files) | set(every_method_files()))))
    task.setup(data, ctx, resume, progress)
    state = Progress()
    if resume is not None:
        restore(task, resume, state)
        log(f"resuming {out} after epoch {state.epoch}/{task.run.epochs}")
    runlog = RunLog(out, state.history, task.run.tensorboard) if ctx.is_main else None
    if ctx.is_main:
        if state.history:
            runlog.write()  # drops rows of epochs after the checkpoint (killed between log and checkpoint)
        write_json(out / "config.json", run_record(task, data, ctx))
    for epoch in range(state.epoch, task.run.epochs):
        row = {"epoch": epoch + 1} | train_one_epoch(task, epoch, ctx, progress, out)
        selected, val = validate(task, data, row, progress)
        schedule_epoch(task, selected)
        select_and_save(task, data, state, row, selected, val.summary(), ctx, runlog, out)
        log(epoch_line(row, task.run.epochs, "test" if task.run.select_on == "test" else "val",
                       task.epoch_tag(epoch)))
    if runlog is not None:
        runlog.close()
    return finish(task, data, state, ctx, start_time, progress, log)


def load_run_data(config: TrainConfig, image_cache: str = "", ctx: dist.DistContext | None = None) -> RunData:
    """The dataset of ``config``, its splits, the training split's positive ratio and its image cache.

    With ``image_cache`` (a folder), the cache of these images at ``config.image_size`` is opened there,
    built first (by rank 0, the others waiting) when it is missing.
    """
    annotations = load_dataset(config.dataset, config.root, config.partition)
    plan = resolve_splits(annotations, config)
    cache = None
    if image_cache:
        if ctx is None or ctx.is_main:
            cache = build_image_cache(image_cache, annotations, config.image_size)
        if ctx is not None:
            dist.barrier(ctx)
            cache = cache or open_image_cache(image_cache, annotations, config.image_size)
    return RunData(annotations, plan, positive_ratio(annotations.labels[plan.train]), cache)


def run_record(task: Task, data: RunData, ctx: dist.DistContext) -> dict:
    """``config.json``: what the run is and what it ran on."""
    plan = data.plan
    return {"config": task.data_config.to_dict(), "seed": task.run.seed, "world_size": ctx.world_size,
            "device": str(ctx.device), "selection": plan.note, "train_images": len(plan.train),
            "val_images": len(plan.val), "test_images": len(plan.test),
            "attributes": list(data.annotations.attributes), "versions": library_versions()} \
        | task.checkpoint_fields()


def restore(task: Task, ckpt: dict, state: Progress) -> None:
    """Continue from a ``last.pt``: the task's weights, optimiser, schedule, EMA, scaler, state and RNGs."""
    task.load_state_dict(task.model, ckpt["model"], "last.pt")
    load_optimizer_state(task.optimizer, ckpt["optimizer"])
    if task.scheduler is not None:
        task.scheduler.load_state_dict(ckpt["scheduler"])
    task.scaler.load_state_dict(ckpt["scaler"])
    if task.ema is not None:
        task.load_state_dict(task.ema.module, ckpt["ema"], "last.pt (EMA)")
    task.load_extra_state(ckpt)
    state.epoch, state.best, state.history = ckpt["epoch"], ckpt["best"], list(ckpt["history"])
    # Restored for completeness; what makes the continuation exact is the per-epoch re-seeding.
    set_rng_state(ckpt["rng"])


def train_one_epoch(task: Task, epoch: int, ctx: dist.DistContext, progress: bool, out: Path) -> dict:
    """One pass over the task's batches; returns the epoch's training columns of ``log.csv``."""
    from tqdm.auto import tqdm

    # Dropout and anything else drawing from the global RNGs: a function of (seed, epoch, rank).
    seed_everything(epoch_seed(task.run.seed, epoch, 2 + ctx.rank))
    task.on_epoch_start(epoch)
    batches = task.train_batches(epoch)
    steps = len(batches)
    if steps == 0:
        raise ConfigError(f"the training split gives no batch of batch_size {task.run.batch_size} per process "
                          "(a final batch of one image is dropped); use more images or a smaller batch_size")
    start = time.perf_counter()
    # On a GPU, reading the loss every step would make the host wait for the device at every step: losses
    # stay on the device and are read every LOSS_READ_EVERY steps (on the CPU every step, which costs nothing).
    read_every = 1 if ctx.device.type == "cpu" else LOSS_READ_EVERY
    losses = torch.zeros(steps, dtype=torch.float64, device=ctx.device)
    sizes = torch.zeros(steps, dtype=torch.float64)
    unread, pending_rows = 0, []  # first step not read yet; the annotation rows of the steps since
    bar = tqdm(batches, total=steps, leave=False, desc=f"epoch {epoch + 1}/{task.run.epochs}",
               disable=not (progress and ctx.is_main))
    for step, batch in enumerate(bar):
        loss = task.training_step(batch)["loss"]
        losses[step] = dist.all_reduce_mean(loss.detach(), ctx)  # same on every rank, so all stop together
        sizes[step] = len(batch[1])
        pending_rows.append(batch[2])
        if step + 1 - unread >= read_every or step + 1 == steps:
            read = losses[unread:step + 1].cpu().numpy()
            bad = np.flatnonzero(~np.isfinite(read))
            if len(bad):
                at = unread + int(bad[0])
                raise TrainingDiverged(diverged_message(float(read[bad[0]]), epoch, at, steps,
                                                        pending_rows[int(bad[0])], out))
            unread, pending_rows = step + 1, []
            bar.set_postfix(loss=f"{read[-1]:.3f}")
        optimizer_step(task, loss, epoch * steps + step)
    seen = float(sizes.sum())
    total = float((losses.cpu() * sizes).sum())
    train_s = time.perf_counter() - start
    return {"train_loss": total / max(seen, 1), "lr": task.optimizer.param_groups[0]["lr"], "train_s": train_s,
            "train_img_s": seen * ctx.world_size / train_s} | task.epoch_summary()


def diverged_message(value: float, epoch: int, step: int, steps: int, rows: torch.Tensor, out: Path) -> str:
    last = out / "last.pt"  # written after every epoch, so it holds the `epoch` finished ones
    good = f"{last} (after epoch {epoch})" if epoch > 0 and last.exists() else "none written yet"
    return (f"loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps} (global step "
            f"{epoch * steps + step + 1}), batch of annotation rows {rows[:8].tolist()}"
            f"{'...' if len(rows) > 8 else ''}; last good checkpoint: {good}")


def optimizer_step(task: Task, loss: torch.Tensor, global_step: int) -> None:
    """Backward and one optimiser step: loss scaling, gradient clipping, EMA and per-step schedules."""
    optimizer, scaler = task.optimizer, task.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # Gradients at their true scale before anything reads them: the clip below or an optimiser step pre-hook
    # (PromptPAR's per-group clip). Left to it, a fused optimiser would unscale only inside its kernel.
    scaler.unscale_(optimizer)  # a no-op without fp16
    if task.grad_clip > 0:
        nn.utils.clip_grad_norm_(task.model.parameters(), task.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if task.ema is not None:
        task.ema.update(task.model, step=global_step)
    if task.per_step and task.scheduler is not None:
        task.scheduler.step()


def validate(task: Task, data: RunData, row: dict, progress: bool) -> tuple[float, PARMetrics]:
    """Score the evaluation model on validation (and test with ``select_on="test"``).

    Returns the mA that selects the epoch and the validation metrics.

    Adds the validation loss and metrics (and ``eval_s``) to ``row``.
    """
    start = time.perf_counter()
    threshold = task.data_config.threshold
    model = task.evaluation_model()
    val_preds = task.predict(model, "val", progress)
    val = split_metrics(data.annotations, val_preds, threshold)
    targets = torch.from_numpy(data.annotations.labels[val_preds.rows].astype(np.float32))
    row["val_loss"] = float(task.validation_loss(torch.from_numpy(val_preds.logits), targets))
    row |= {f"val_{k}": v for k, v in val.summary().items() if k in METRIC_KEYS}
    selected = val.ma
    if task.run.select_on == "test":
        test = split_metrics(data.annotations, task.predict(model, "test", progress), threshold)
        row |= {f"test_{k}": v for k, v in test.summary().items() if k in METRIC_KEYS}
        selected = test.ma
    row["eval_s"] = time.perf_counter() - start
    return selected, val


def schedule_epoch(task: Task, selected: float) -> None:
    """Step a per-epoch learning-rate schedule (a plateau schedule on the selected mA)."""
    if task.scheduler is None or task.per_step:
        return
    if isinstance(task.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        task.scheduler.step(selected)
    else:
        task.scheduler.step()


def select_and_save(task: Task, data: RunData, state: Progress, row: dict, selected: float, val: dict,
                    ctx: dist.DistContext, runlog: RunLog | None, out: Path) -> None:
    """Keep the epoch in ``best.pt`` when it is the best so far; write ``last.pt``, the log and the task's files."""
    # A split too small to score any attribute gives NaN; the first epoch still becomes best.pt.
    is_best = bool(selected > state.best["value"]) or state.best["epoch"] == 0
    if is_best:
        state.best = {"epoch": row["epoch"], "value": float(selected) if np.isfinite(selected) else -np.inf}
    row["best"] = is_best
    state.history.append(row)
    state.epoch = row["epoch"]
    if ctx.is_main:
        attributes = data.annotations.attributes
        if is_best:
            save_atomic(model_checkpoint(task, task.evaluation_model(), attributes, row["epoch"], val,
                                         data.plan.note), out / "best.pt")
        save_atomic(training_checkpoint(task, state, attributes), out / "last.pt", keep_previous=True)
        task.save_files(out)
        runlog.append(row)
    dist.barrier(ctx)


def model_checkpoint(task: Task, model: nn.Module, attributes, epoch: int, metrics: dict, note: str) -> dict:
    """``best.pt``: a complete evaluation model with what is needed to use it (thresholds come at the end)."""
    return {
        "format": FORMAT,
        "kind": "model",
        "epoch": epoch,
        "model": task.state_dict(model),
        "config": task.data_config.to_dict(),
        "attributes": list(attributes),
        "thresholds": None,
        "metrics": metrics,
        "selection": note,
        "versions": library_versions(),
    } | task.checkpoint_fields()


def training_checkpoint(task: Task, state: Progress, attributes) -> dict:
    """``last.pt``: everything an exact resume needs."""
    return {
        "format": FORMAT, "kind": "training", "epoch": state.epoch, "model": task.state_dict(task.model),
        "ema": None if task.ema is None else task.state_dict(task.ema.module),
        "optimizer": task.optimizer.state_dict(),
        "scheduler": None if task.scheduler is None else task.scheduler.state_dict(),
        "scaler": task.scaler.state_dict(), "rng": rng_state(), "best": state.best, "history": state.history,
        "config": task.data_config.to_dict(), "attributes": list(attributes), "versions": library_versions(),
        "thresholds": [task.data_config.threshold] * len(attributes),  # tuned ones go to best.pt
    } | task.checkpoint_fields() | task.extra_state()


def finish(task: Task, data: RunData, state: Progress, ctx: dist.DistContext, start_time: float, progress: bool,
           log) -> RunResult:
    """Load the selected epoch, tune thresholds on validation if asked, evaluate test once, write results."""
    out = Path(task.run.output_dir)
    best_ckpt = load_checkpoint(out / "best.pt", map_location="cpu")
    model = task.load_selected(best_ckpt["model"], data.annotations.num_attributes, str(out / "best.pt"),
                               ctx.device)
    val_preds = task.predict(model, "val", progress)
    test_preds = task.predict(model, "test", progress)
    evaluation = evaluate_selected(data.annotations, val_preds, test_preds, task.data_config.threshold,
                                   task.run.tune_thresholds)
    if ctx.is_main:
        # Only new thresholds are written: re-opening a finished run leaves its best.pt untouched.
        if evaluation.thresholds is not None and best_ckpt["thresholds"] != evaluation.thresholds.tolist():
            best_ckpt["thresholds"] = evaluation.thresholds.tolist()
            save_atomic(best_ckpt, out / "best.pt")
        write_results(out, evaluation, data.plan.note, state.best["epoch"], task.run.epochs, ctx.world_size,
                      time.perf_counter() - start_time, log)
    dist.barrier(ctx)
    return RunResult(out, task.data_config, pd.DataFrame(state.history), state.best["epoch"], data.plan.note,
                     evaluation.val, evaluation.test, evaluation.test_tuned, evaluation.thresholds,
                     time.perf_counter() - start_time, task.method, task.method_config)


def split_metrics(annotations, preds: Predictions, threshold) -> PARMetrics:
    """PAR metrics of predictions against the annotations' labels of their rows."""
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=threshold,
                              attributes=annotations.attributes)


TEST_PREDICTIONS, VAL_PREDICTIONS = "test_predictions.npz", "val_predictions.npz"


@dataclass(frozen=True)
class Evaluation:
    """The selected model on validation and test."""

    val: PARMetrics
    test: PARMetrics
    test_tuned: PARMetrics | None
    thresholds: np.ndarray | None  # (A,) tuned on validation
    val_preds: Predictions
    test_preds: Predictions


def evaluate_selected(annotations, val_preds: Predictions, test_preds: Predictions, threshold: float,
                      tune: bool) -> Evaluation:
    """Validation and test metrics at the fixed threshold, plus test at thresholds tuned on validation."""
    val = split_metrics(annotations, val_preds, threshold)
    thresholds = tune_thresholds(annotations.labels[val_preds.rows], val_preds.probs, default=threshold) \
        if tune else None
    test = split_metrics(annotations, test_preds, threshold)
    tuned = split_metrics(annotations, test_preds, thresholds) if thresholds is not None else None
    return Evaluation(val, test, tuned, thresholds, val_preds, test_preds)


def write_results(out: Path, evaluation: Evaluation, selection: str, best_epoch: int, epochs: int,
                  world_size: int, wall_s: float, log) -> None:
    """``metrics.json``, ``test_per_attribute.csv`` and the validation and test predictions of a finished run."""
    test, tuned, thresholds = evaluation.test, evaluation.test_tuned, evaluation.thresholds
    results = {
        "selection": selection, "best_epoch": best_epoch, "epochs": epochs,
        "val": evaluation.val.summary(), "test": test.summary(),
        "test_tuned_thresholds": None if tuned is None else tuned.summary(),
        "thresholds": None if thresholds is None else thresholds.tolist(),
        "num_degenerate_test": test.num_degenerate, "world_size": world_size, "wall_s_this_call": wall_s,
    }
    write_json(out / "metrics.json", results)
    table = test.per_attribute.copy()
    if tuned is not None:
        table["tuned_threshold"] = thresholds
        table["tuned_tpr"], table["tuned_tnr"] = tuned.per_attribute["tpr"], tuned.per_attribute["tnr"]
    write_atomic(out / "test_per_attribute.csv", table.to_csv)
    save_predictions(out / TEST_PREDICTIONS, evaluation.test_preds)
    save_predictions(out / VAL_PREDICTIONS, evaluation.val_preds)  # last: its presence marks complete results
    log(f"best epoch {best_epoch} ({selection})")
    log("test  " + "  ".join(f"{k} {v:.2f}" for k, v in test.summary().items() if k in METRIC_KEYS))
    if tuned is not None:
        log("tuned " + "  ".join(f"{k} {v:.2f}" for k, v in tuned.summary().items() if k in METRIC_KEYS))


def saved_result(task: Task, out: Path, attributes: list[str]) -> RunResult | None:
    """The :class:`RunResult` of the finished run in ``out``, from the files :func:`write_results` wrote.

    The same numbers as re-evaluating its ``best.pt`` (those files are that evaluation), without building
    the model. ``attributes``: the run's, checked against its dataset's. None when the folder lacks
    validation predictions (runs of earlier versions), when its results are of another schedule than
    ``task``'s (a finished run continued for more epochs), or when the predictions do not give the
    metrics ``metrics.json`` recorded (a finish killed while writing them, or files of another run).
    """
    start_time = time.perf_counter()
    results = json.loads((out / "metrics.json").read_text())
    if not (out / VAL_PREDICTIONS).is_file() or results.get("epochs") != task.run.epochs:
        return None
    config = task.data_config
    annotations = load_dataset(config.dataset, config.root, config.partition)
    check_attributes(attributes, annotations.attributes, str(out / "config.json"), annotations.name)
    val_preds, test_preds = (load_predictions(out / name, len(annotations.labels), annotations.num_attributes)
                             for name in (VAL_PREDICTIONS, TEST_PREDICTIONS))
    thresholds = None if results["thresholds"] is None else np.asarray(results["thresholds"], dtype=np.float64)
    val, test = (split_metrics(annotations, preds, config.threshold) for preds in (val_preds, test_preds))
    tuned = None if thresholds is None else split_metrics(annotations, test_preds, thresholds)
    recorded = (results["val"], results["test"], results["test_tuned_thresholds"])
    if any((m is None) != (r is None) or (m is not None and not _same_summary(m.summary(), r))
           for m, r in zip((val, test, tuned), recorded)):
        return None
    return RunResult(out, config, pd.read_csv(out / "log.csv"), results["best_epoch"], results["selection"],
                     val, test, tuned, thresholds, time.perf_counter() - start_time, task.method,
                     task.method_config)


def _same_summary(computed: dict, recorded: dict) -> bool:
    """Metrics computed now equal those a ``metrics.json`` recorded (JSON keeps floats exactly; NaN is NaN)."""
    return computed.keys() == recorded.keys() and all(
        np.isclose(computed[k], recorded[k], rtol=0.0, atol=1e-9, equal_nan=True) for k in computed)


def epoch_line(row: dict, epochs: int, split: str, tag: str = "") -> str:
    """The one line a finished epoch logs."""
    metrics = "  ".join(f"{k} {row[f'{split}_{k}']:.2f}" for k in METRIC_KEYS)
    return (f"epoch {row['epoch']:>3}/{epochs}  {tag + '  ' if tag else ''}loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  lr {row['lr']:.1e}  {split}: {metrics}  "
            f"{row['train_img_s']:.0f} img/s  {row['train_s'] + row['eval_s']:.0f} s{'  *' if row['best'] else ''}")
