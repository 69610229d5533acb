"""The training engine: one loop, :func:`fit`, for every method's :class:`~parlab.training.task.Task`.

A run writes one folder (``output_dir``), whose files :mod:`parlab.runs` names, writes and reads back.

The loop is small named steps: :func:`train_one_epoch` (seeding, the task's batches and steps,
:func:`optimizer_step`, the NaN guard), :func:`validate`, :func:`select_and_save` and
:func:`finish`. Resuming (``existing="resume"``) restores weights, optimiser, scheduler, EMA,
scaler, RNG states and the task's :meth:`~parlab.training.task.Task.extra_state` from
``last.pt``; since every epoch's order and augmentation depend only on (seed, epoch), a resumed
run ends bit-identical to an uninterrupted one on the CPU. The same code runs under ``torchrun``
with DistributedDataParallel; rank 0 writes every file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from parlab.data.image_cache import build_image_cache, open_image_cache
from parlab.errors import ConfigError, ParlabError
from parlab.labelstats import positive_ratio
from parlab.metrics import PARMetrics
from parlab.runs import (BEST, LAST, RunResult, clear_run_folder, prepare_run_folder, result_of, run_files,
                         run_folder_lock, write_record, write_results)
from parlab.training import distributed as dist
from parlab.training.checkpoint import FORMAT, check_attributes, library_versions, load_checkpoint, save_atomic
from parlab.training.config import BaselineConfig, DataConfig, RunFields
from parlab.training.evaluation import evaluate_selected, split_metrics
from parlab.training.optim import load_optimizer_state
from parlab.training.runlog import RunLog, summary_writer_class
from parlab.training.sampling import epoch_seed
from parlab.training.seeding import rng_state, seed_everything, set_rng_state
from parlab.training.splits import resolve_splits
from parlab.training.task import RunData, SupervisedTask, Task

METRIC_KEYS = ("ma", "acc", "prec", "rec", "f1")  # in the epoch line
LOGGED_METRICS = METRIC_KEYS + ("instance_f1",)  # in log.csv, per epoch and split
LOSS_READ_EVERY = 25  # training steps between reads of the loss on a GPU (the NaN guard's granularity there)


class TrainingDiverged(ParlabError, RuntimeError):
    """The loss became NaN or infinite; names the step, the batch and the last good checkpoint."""


@dataclass
class Progress:
    """Where a run stands: epochs done, the selected one so far, one row per epoch."""

    epoch: int = 0
    best: dict = field(default_factory=lambda: {"epoch": 0, "value": -np.inf})
    history: list[dict] = field(default_factory=list)


def train(run: RunFields | None = None, data: DataConfig | None = None, method: BaselineConfig | None = None,
          existing: str = "error", progress: bool = True, log=None) -> RunResult:
    """Train the baseline ``method`` on ``data`` as ``run`` says, select on validation, test once.

    Each config left out takes its defaults. See :func:`fit` for the other arguments.
    """
    return fit(SupervisedTask(run or RunFields(), data or DataConfig(), method or BaselineConfig()), existing,
               progress, log)


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
    if task.run.tensorboard:
        summary_writer_class()  # a missing package stops the run here, before its folder is touched
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
    if task.run.precise_bn and type(task).forward_only is Task.forward_only:  # before anything is written
        raise ConfigError(f"precise_bn is not available for {type(task).__name__}: its training steps change "
                          "more than BatchNorm statistics")
    if task.run.precise_bn and getattr(task.method, "ema", False):
        raise ConfigError("precise_bn recomputes the trained model's statistics, not those of its EMA copy that "
                          "validation scores: use one or the other")
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
    data = load_run_data(task.data, task.run, ctx, square=task.transform(train=False).square)
    if resume is not None:
        check_attributes(resume["attributes"], data.annotations.attributes, str(source), data.annotations.name)
    if existing == "overwrite":  # only now that the inputs read
        clear_run_folder(out, ctx)
    task.setup(data, ctx, resume, progress)
    state = Progress()
    if resume is not None:
        restore(task, resume, state)
        log(f"resuming {out} after epoch {state.epoch}/{task.run.epochs}")
    runlog = RunLog(out, state.history, task.run.tensorboard) if ctx.is_main else None
    if ctx.is_main:
        if state.history:
            runlog.write()  # drops rows of epochs after the checkpoint (killed between log and checkpoint)
        write_record(out, run_record(task, data, ctx))
    for epoch in range(state.epoch, task.run.epochs):
        row = {"epoch": epoch + 1} | train_one_epoch(task, epoch, ctx, progress, out)
        check_finite_weights(task, epoch, out)
        if task.run.precise_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in task.model.modules()):
            row |= running_statistics_validation(task, data, progress)
            recompute_bn_statistics(task, epoch, task.run.precise_bn, ctx)
        selected, val = validate(task, data, row, progress)
        schedule_epoch(task, selected)
        select_and_save(task, data, state, row, selected, val.summary(), ctx, runlog, out)
        log(epoch_line(row, task.run.epochs, data.plan.selects_on, task.epoch_tag(epoch)))
    if runlog is not None:
        runlog.close()
    return finish(task, data, state, ctx, start_time, progress, log)


def load_run_data(config: DataConfig, run: RunFields, ctx: dist.DistContext | None = None,
                  square: bool = False) -> RunData:
    """The dataset of ``config``, its splits, the training split's positive ratio and its image cache.

    ``run`` gives the protocol and the seed of a carved validation split. With ``config.image_cache`` (a
    folder), the cache of these images at ``config.image_size`` (letterboxed to a square first with
    ``square``, as the task's transform does) is opened there, built first (by rank 0, the others waiting)
    when it is missing.
    """
    annotations = config.annotations()
    plan = resolve_splits(annotations, config, run.protocol, run.seed)
    cache = None
    if config.image_cache:
        if ctx is None or ctx.is_main:
            cache = build_image_cache(config.image_cache, annotations, config.image_size, square=square)
        if ctx is not None:
            dist.barrier(ctx)
            cache = cache or open_image_cache(config.image_cache, annotations, config.image_size, square)
    return RunData(annotations, plan, positive_ratio(annotations.labels[plan.train]), cache)


def run_record(task: Task, data: RunData, ctx: dist.DistContext) -> dict:
    """``config.json``: what the run is, what it ran on and the files it writes."""
    plan = data.plan
    return task.checkpoint_fields() | {
        "world_size": ctx.world_size, "device": str(ctx.device), "selection": plan.note,
        "train_images": len(plan.train), "val_images": len(plan.val), "test_images": len(plan.test),
        "attributes": list(data.annotations.attributes), "versions": library_versions(),
        "files": run_files(task.extra_files, task.run.tensorboard)}


def restore(task: Task, ckpt: dict, state: Progress) -> None:
    """Continue from a ``last.pt``: the task's weights, optimiser, schedule, EMA, scaler, state and RNGs."""
    task.load_state_dict(task.model, ckpt["model"], LAST)
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
    return (f"loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps} (global step "
            f"{epoch * steps + step + 1}), batch of annotation rows {rows[:8].tolist()}"
            f"{'...' if len(rows) > 8 else ''}; last good checkpoint: {last_good(epoch, out)}")


def check_finite_weights(task: Task, epoch: int, out: Path) -> None:
    """Stop when the epoch's last step left weights that are not finite (its loss, read before it, was).

    The NaN guard of :func:`train_one_epoch` reads losses, which only show such weights at the next step;
    checked here, before validation scores a model that cannot predict anything.
    """
    # Parameters must be finite; buffers (BatchNorm statistics) must not be NaN: attention masks hold -inf.
    bad = next((name for name, p in task.model.named_parameters() if not torch.isfinite(p).all()), None) or \
        next((name for name, b in task.model.named_buffers() if b.is_floating_point() and b.isnan().any()), None)
    if bad is not None:
        raise TrainingDiverged(f"weights are not finite after epoch {epoch + 1} (first: {bad}); lower the "
                               f"learning rate or clip gradients; last good checkpoint: {last_good(epoch, out)}")


def running_statistics_validation(task: Task, data: RunData, progress: bool) -> dict[str, float]:
    """Validation loss and mA under the BatchNorm statistics training kept, before :func:`recompute_bn_statistics`
    replaces them: ``log.csv``'s record of what PreciseBN changed, epoch by epoch."""
    preds = task.predict(task.evaluation_model(), "val", progress)
    targets = torch.from_numpy(data.annotations.labels[preds.rows].astype(np.float32))
    loss = float(task.validation_loss(torch.from_numpy(preds.logits), targets))
    return {"val_loss_running_bn": loss, "val_ma_running_bn": split_metrics(data.annotations, preds,
                                                                           task.data.threshold).summary()["ma"]}


def recompute_bn_statistics(task: Task, epoch: int, batches: int, ctx: dist.DistContext) -> int:
    """PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", section 3): the running statistics of
    every BatchNorm layer replaced by the plain average over the first ``batches`` training batches of
    ``epoch``, at the weights the epoch ended with; returns how many layers were recomputed.

    The running averages that training keeps mix statistics of weights that have since moved. A layer whose
    input distribution moves fast, such as PromptPAR's BatchNorm on its logits at the warm-up's peak learning
    rate (the normalisation hides the logits' offset and scale from the loss), then evaluates its inputs
    against stale statistics. Averaged over ranks under torchrun.
    """
    seed_everything(epoch_seed(task.run.seed, epoch, 2 + ctx.rank))  # the epoch's own draws, as in training
    task.on_epoch_start(epoch)
    # The layers whose statistics training updates; a frozen tower kept in eval mode keeps its own.
    norms = [m for m in task.model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    for i, batch in enumerate(task.train_batches(epoch)):
        if i == batches:
            break
        task.forward_only(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if ctx.distributed:
            m.running_mean.copy_(dist.all_reduce_mean(m.running_mean, ctx))
            m.running_var.copy_(dist.all_reduce_mean(m.running_var, ctx))
    return len(norms)


def last_good(epoch: int, out: Path) -> str:
    """The checkpoint a run that fails in epoch ``epoch`` (0-based) can resume from, in words."""
    last = out / LAST  # written after every epoch, so it holds the `epoch` finished ones
    return f"{last} (after epoch {epoch})" if epoch > 0 and last.exists() else "none written yet"


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
    """Score the evaluation model on validation (and on test under the reference protocol).

    Returns the mA that selects the epoch and the validation metrics.

    Adds the validation loss and metrics (and ``eval_s``) to ``row``.
    """
    start = time.perf_counter()
    threshold = task.data.threshold
    model = task.evaluation_model()
    val_preds = task.predict(model, "val", progress)
    if not np.isfinite(val_preds.logits).all():  # finite weights whose outputs overflow
        epoch = row["epoch"] - 1
        raise TrainingDiverged(f"the model's outputs on validation are not finite after epoch {epoch + 1}; lower "
                               "the learning rate or clip gradients; last good checkpoint: "
                               f"{last_good(epoch, Path(task.run.output_dir))}")
    val = split_metrics(data.annotations, val_preds, threshold)
    targets = torch.from_numpy(data.annotations.labels[val_preds.rows].astype(np.float32))
    row["val_loss"] = float(task.validation_loss(torch.from_numpy(val_preds.logits), targets))
    row |= {f"val_{k}": v for k, v in val.summary().items() if k in LOGGED_METRICS}
    selected = val.ma
    if data.plan.selects_on == "test":
        test = split_metrics(data.annotations, task.predict(model, "test", progress), threshold)
        row |= {f"test_{k}": v for k, v in test.summary().items() if k in LOGGED_METRICS}
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
                                         data.plan.note), out / BEST)
        save_atomic(training_checkpoint(task, state, attributes), out / LAST, keep_previous=True)
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
        "attributes": list(attributes), "versions": library_versions(),
        "thresholds": [task.data.threshold] * len(attributes),  # tuned ones go to best.pt
    } | task.checkpoint_fields() | task.extra_state()


def finish(task: Task, data: RunData, state: Progress, ctx: dist.DistContext, start_time: float, progress: bool,
           log) -> RunResult:
    """Load the selected epoch, tune thresholds on validation if asked, evaluate test once, write results."""
    out = Path(task.run.output_dir)
    best_ckpt = load_checkpoint(out / BEST, map_location="cpu")
    model = task.load_selected(best_ckpt["model"], data.annotations.num_attributes, str(out / BEST), ctx.device)
    val_preds = task.predict(model, "val", progress)
    test_preds = task.predict(model, "test", progress)
    evaluation = evaluate_selected(data.annotations, val_preds, test_preds, task.data.threshold,
                                   task.run.tune_thresholds)
    if ctx.is_main:
        # Only new thresholds are written: re-opening a finished run leaves its best.pt untouched.
        if evaluation.thresholds is not None and best_ckpt["thresholds"] != evaluation.thresholds.tolist():
            best_ckpt["thresholds"] = evaluation.thresholds.tolist()
            save_atomic(best_ckpt, out / BEST)
        write_results(out, evaluation, data.plan.note, state.best["epoch"], task.run.epochs, ctx.world_size,
                      time.perf_counter() - start_time)
        log_results(evaluation, data.plan.note, state.best["epoch"], log)
    dist.barrier(ctx)
    return result_of(task, out, pd.DataFrame(state.history), state.best["epoch"], data.plan.note, evaluation.val,
                     evaluation.test, evaluation.test_tuned, evaluation.thresholds, time.perf_counter() - start_time)


def log_results(evaluation, selection: str, best_epoch: int, log) -> None:
    """The finished run's lines: the selected epoch and its test metrics (at tuned thresholds too)."""
    log(f"best epoch {best_epoch} ({selection})")
    for word, metrics in (("test ", evaluation.test), ("tuned", evaluation.test_tuned)):
        if metrics is not None:
            log(f"{word} " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.summary().items() if k in METRIC_KEYS))


def epoch_line(row: dict, epochs: int, split: str, tag: str = "") -> str:
    """The one line a finished epoch logs."""
    metrics = "  ".join(f"{k} {row[f'{split}_{k}']:.2f}" for k in METRIC_KEYS)
    return (f"epoch {row['epoch']:>3}/{epochs}  {tag + '  ' if tag else ''}loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  lr {row['lr']:.1e}  {split}: {metrics}  "
            f"{row['train_img_s']:.0f} img/s  {row['train_s'] + row['eval_s']:.0f} s{'  *' if row['best'] else ''}")
