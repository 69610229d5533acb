"""The training engine: one function, :func:`train`, for every method built on a PARModel.

A run writes one folder (``config.output_dir``):

- ``config.json``: the resolved config, seed, world size, device, split note and library versions;
- ``log.csv``: one row per epoch (train loss, lr, validation loss and mA/Acc/Prec/Rec/F1, speed);
- ``last.pt`` (+ ``previous.pt``): the full training state after the latest epoch;
- ``best.pt``: the selected epoch's evaluation weights, config, attributes and thresholds;
- ``metrics.json``, ``test_per_attribute.csv``, ``test_predictions.npz``: the final test evaluation.

Resuming (``existing="resume"``) restores weights, optimiser, scheduler, EMA,
scaler and RNG states from ``last.pt``; since every epoch's order and
augmentation depend only on (seed, epoch), a resumed run ends bit-identical to
an uninterrupted one on the CPU. The same code runs under ``torchrun`` with
DistributedDataParallel; rank 0 writes every file.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from parlab.data import load_dataset
from parlab.data.images import PARImageDataset
from parlab.files import write_atomic, write_json
from parlab.labelstats import positive_ratio
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.training import distributed as dist
from parlab.training.checkpoint import (
    FORMAT,
    CheckpointError,
    check_attributes,
    library_versions,
    load_checkpoint,
    save_atomic,
)
from parlab.training.config import TrainConfig
from parlab.training.evaluation import Predictions, autocast, eval_loader, predict_dataset
from parlab.training.losses import PARLoss
from parlab.training.recipe import Recipe
from parlab.training.runlog import RunLog
from parlab.training.sampling import EpochSampler, epoch_seed
from parlab.training.seeding import rng_state, seed_everything, set_rng_state
from parlab.training.splits import SplitPlan, resolve_splits
from parlab.training.thresholds import tune_thresholds

# Fields that may change when a run is resumed: they do not affect the numbers.
RESUMABLE_CHANGES = ("device", "num_workers", "output_dir", "tensorboard", "eval_batch_size")
METRIC_KEYS = ("ma", "acc", "prec", "rec", "f1")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; names the step, the batch and the last good checkpoint."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run returns (everything is also on disk in ``output_dir``)."""

    output_dir: Path
    config: TrainConfig
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


def model_for(config: TrainConfig, num_attributes: int, pretrained: bool = True) -> nn.Module:
    """The config's baseline model; ``pretrained=False`` skips the weights file (a checkpoint will be loaded)."""
    return Recipe(config).build(num_attributes, pretrained=pretrained)


def _out(config: TrainConfig) -> Path:
    return Path(config.output_dir)


RUN_FILES = ("last.pt", "previous.pt", "best.pt", "log.csv", "metrics.json", "config.json",
             "test_per_attribute.csv", "test_predictions.npz")


def prepare_run_folder(out: Path, config, existing: str, ctx: dist.DistContext, resumable: tuple[str, ...] = (),
                       extra_files: tuple[str, ...] = (), config_key: str = "config") -> dict | None:
    """Check a run folder against ``existing``; return the checkpoint to resume from, if any.

    ``config`` is the run's config dataclass (a :class:`~parlab.training.config.ConfigFile`); a
    resumed run must have been started with the same one, except for the ``resumable`` fields.
    ``config_key``: where the training checkpoint keeps it.
    """
    if existing not in ("error", "resume", "overwrite"):
        raise ValueError(f"existing must be 'error', 'resume' or 'overwrite', got {existing!r}")
    last, previous = out / "last.pt", out / "previous.pt"
    has_run = last.exists() or previous.exists()
    if has_run and existing == "error":
        raise FileExistsError(
            f"{out} already holds a run; resume it (existing='resume', --resume) or start "
            "again (existing='overwrite', --overwrite)"
        )
    if existing == "overwrite":
        dist.barrier(ctx)
        if ctx.is_main:
            for name in RUN_FILES + extra_files:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
        dist.barrier(ctx)
        return None
    if existing == "resume" and has_run:
        # A kill between the two final renames of save_atomic leaves only previous.pt.
        source = last if last.exists() else previous
        ckpt = load_checkpoint(source)
        saved = type(config).from_dict(ckpt[config_key], source=str(source))
        diff = saved.differences(config, ignore=resumable)
        if diff:
            raise CheckpointError(
                f"{source}: cannot resume with a different config (checkpoint vs requested):\n  " + "\n  ".join(diff)
            )
        return ckpt
    return None


def train_loader(dataset: PARImageDataset, batch_size: int, seed: int, num_workers: int,
                 ctx: dist.DistContext) -> DataLoader:
    """Training batches: the epoch's seeded permutation (call ``loader.sampler.set_epoch``), sharded by rank."""
    sampler = EpochSampler(len(dataset), seed, ctx.rank, ctx.world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=drops_last_batch(len(sampler), batch_size), pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def drops_last_batch(samples: int, batch_size: int) -> bool:
    # BatchNorm cannot train on a batch of one; drop a final batch of exactly one image.
    return samples % batch_size == 1


def split_metrics(annotations, preds: Predictions, threshold) -> PARMetrics:
    """PAR metrics of predictions against the annotations' labels of their rows."""
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=threshold,
                              attributes=annotations.attributes)


def _eval_model(model: nn.Module, ema) -> nn.Module:
    """The weights that are evaluated and selected: the EMA copy when there is one."""
    return model if ema is None else ema.module


def model_checkpoint(model: nn.Module, config: TrainConfig, attributes, epoch: int, metrics: dict,
                      thresholds: np.ndarray | None, note: str, recipe: Recipe | None = None) -> dict:
    recipe = recipe or Recipe(config)
    return {
        "format": FORMAT,
        "kind": "model",
        "epoch": epoch,
        "model": recipe.state_dict(model),
        "config": config.to_dict(),
        "attributes": list(attributes),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "metrics": metrics,
        "selection": note,
        "versions": library_versions(),
    } | recipe.checkpoint_fields()


def train(config: TrainConfig, existing: str = "error", progress: bool = True, log=None,
          recipe: Recipe | None = None) -> RunResult:
    """Train, select on validation, test once; see the module docstring for what is written.

    Args:
        config: the experiment.
        existing: what to do when ``output_dir`` already holds a run: "error", "resume" (continue from
            its last checkpoint; a finished run is only re-evaluated) or "overwrite".
        progress: tqdm bars per epoch (rank 0 only).
        log: where the one-line-per-epoch summary goes (default: printed and flushed, so that
            redirected output of long runs shows each epoch as it ends).
    """
    recipe = recipe or Recipe(config)
    return launch(lambda line_log, ctx: _train(config, recipe, existing, progress, line_log, ctx), config.device, log)


def launch(body, device: str, log=None):
    """Join the process group (under torchrun), run ``body(log, ctx)``, leave it again.

    Only rank 0 logs; ``log=None`` prints each line flushed, so redirected output of long runs
    shows each epoch as it ends.
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


def _train(config: TrainConfig, recipe: Recipe, existing: str, progress: bool, log,
           ctx: dist.DistContext) -> RunResult:
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    out = _out(config)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    resume = prepare_run_folder(out, config, existing, ctx, RESUMABLE_CHANGES)
    if resume is not None:
        recipe.check_resume(resume, str(out / "last.pt"))
    device = ctx.device

    annotations = load_dataset(config.dataset, config.root, config.partition)
    plan: SplitPlan = resolve_splits(annotations, config)
    train_ratio = positive_ratio(annotations.labels[plan.train])

    seed_everything(config.seed)  # same initial weights on every rank
    if resume is not None:
        check_attributes(resume["attributes"], annotations.attributes, str(out / "last.pt"), annotations.name)
    # A resumed run takes its weights from the checkpoint, not from the pretrained file.
    model = recipe.build(annotations.num_attributes, annotations.sentences, pretrained=resume is None).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema else None
    train_set = PARImageDataset(annotations, plan.train, recipe.transform(train=True))
    loader = train_loader(train_set, config.batch_size, config.seed, config.num_workers, ctx)
    eval_tf = recipe.transform(train=False)
    sets = {"val": PARImageDataset(annotations, plan.val, eval_tf),
            "test": PARImageDataset(annotations, plan.test, eval_tf)}
    loaders = {k: eval_loader(v, config.eval_batch_size, config.num_workers, ctx) for k, v in sets.items()}

    optimizer, scheduler, per_step = recipe.optimizer(model, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    criterion = recipe.criterion(train_ratio).to(device)
    val_criterion = PARLoss(config.loss, train_ratio)  # on the gathered CPU logits

    start_epoch, best = 0, {"epoch": 0, "value": -np.inf}
    history: list[dict] = []
    if resume is not None:
        recipe.load_state_dict(model, resume["model"], "last.pt")
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if ema is not None:
            recipe.load_state_dict(ema.module, resume["ema"], "last.pt (EMA)")
        start_epoch, best, history = resume["epoch"], resume["best"], list(resume["history"])
        # Restored for completeness; what makes the continuation exact is the per-epoch re-seeding below.
        set_rng_state(resume["rng"])
        log(f"resuming {out} after epoch {start_epoch}/{config.epochs}")
    runlog = RunLog(out, history, config.tensorboard) if ctx.is_main else None
    if ctx.is_main:
        if history:
            runlog.write()  # drops rows of epochs after the checkpoint (killed between log and checkpoint)
        record = {"config": config.to_dict(), "seed": config.seed, "world_size": ctx.world_size,
                  "device": str(device), "selection": plan.note, "train_images": len(plan.train),
                  "val_images": len(plan.val), "test_images": len(plan.test),
                  "attributes": list(annotations.attributes), "versions": library_versions()}
        write_json(out / "config.json", record | recipe.checkpoint_fields())

    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else model
    steps = len(loader)
    for epoch in range(start_epoch, config.epochs):
        # Dropout and anything else drawing from the global RNGs: a function of (seed, epoch, rank).
        seed_everything(epoch_seed(config.seed, epoch, 2 + ctx.rank))
        loader.sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(loader, leave=False, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (progress and ctx.is_main))
        for step, (x, y, rows) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, config.amp):
                logits = net(x)
            loss = criterion(logits, y)
            value = float(dist.all_reduce_mean(loss.detach(), ctx))  # same on every rank, so all stop together
            if not np.isfinite(value):
                last = out / "last.pt"  # written after every epoch, so it holds the `epoch` finished ones
                good = f"{last} (after epoch {epoch})" if epoch > 0 and last.exists() else "none written yet"
                raise TrainingDiverged(
                    f"loss is {value} at epoch {epoch + 1}, step {step + 1}/{steps} (global step "
                    f"{epoch * steps + step + 1}), batch of annotation rows {rows[:8].tolist()}"
                    f"{'...' if len(rows) > 8 else ''}; last good checkpoint: {good}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step=epoch * steps + step)
            if per_step and scheduler is not None:
                scheduler.step()
            total += value * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{value:.3f}")
        train_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        evaluated = _eval_model(model, ema)
        val_preds = predict_dataset(evaluated, loaders["val"], ctx, config.amp, config.channels_last, progress)
        val = split_metrics(annotations, val_preds, config.threshold)
        val_targets = torch.from_numpy(annotations.labels[val_preds.rows].astype(np.float32))
        val_loss = float(val_criterion(torch.from_numpy(val_preds.logits), val_targets))
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
               "lr": optimizer.param_groups[0]["lr"]}
        row |= {f"val_{k}": v for k, v in val.summary().items() if k in METRIC_KEYS}
        selected = val.ma
        if config.select_on == "test":
            test_now = split_metrics(annotations, predict_dataset(evaluated, loaders["test"], ctx, config.amp,
                                                             config.channels_last, progress), config.threshold)
            row |= {f"test_{k}": v for k, v in test_now.summary().items() if k in METRIC_KEYS}
            selected = test_now.ma
        eval_s = time.perf_counter() - t1
        row |= {"train_s": train_s, "train_img_s": seen * ctx.world_size / train_s, "eval_s": eval_s}
        if scheduler is not None and not per_step:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(selected)
            else:
                scheduler.step()
        # A split too small to score any attribute gives NaN; the first epoch still becomes best.pt.
        is_best = bool(selected > best["value"]) or best["epoch"] == 0
        if is_best:
            best = {"epoch": epoch + 1, "value": float(selected) if np.isfinite(selected) else -np.inf}
        row["best"] = is_best
        history.append(row)

        if ctx.is_main:
            if is_best:
                save_atomic(model_checkpoint(evaluated, config, annotations.attributes, epoch + 1,
                                              val.summary(), None, plan.note, recipe), out / "best.pt")
            save_atomic({
                "format": FORMAT, "kind": "training", "epoch": epoch + 1, "model": recipe.state_dict(model),
                "ema": None if ema is None else recipe.state_dict(ema.module), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "best": best, "history": history, "config": config.to_dict(),
                "attributes": list(annotations.attributes), "versions": library_versions(),
                "thresholds": [config.threshold] * annotations.num_attributes,  # tuned ones go to best.pt
            } | recipe.checkpoint_fields(), out / "last.pt", keep_previous=True)
            runlog.append(row)
        dist.barrier(ctx)
        log(_epoch_line(row, config.epochs, "test" if config.select_on == "test" else "val"))

    if runlog is not None:
        runlog.close()
    return _finish(config, recipe, annotations, plan, loaders, best, history, ctx, start_time, progress, log)


def _finish(config: TrainConfig, recipe: Recipe, annotations, plan: SplitPlan, loaders: dict, best: dict,
            history: list, ctx: dist.DistContext, start_time: float, progress: bool, log) -> RunResult:
    """Load the selected epoch, tune thresholds on validation if asked, evaluate test once, write results."""
    out = _out(config)
    best_ckpt = load_checkpoint(out / "best.pt", map_location="cpu")
    model = recipe.build(annotations.num_attributes, annotations.sentences, pretrained=False)
    recipe.load_state_dict(model, best_ckpt["model"], str(out / "best.pt"))
    model = model.to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    args = (ctx, config.amp, config.channels_last, progress)
    val_preds = predict_dataset(model, loaders["val"], *args)
    test_preds = predict_dataset(model, loaders["test"], *args, desc="test")
    evaluation = evaluate_selected(annotations, val_preds, test_preds, config.threshold, config.tune_thresholds)
    if ctx.is_main:
        # Only new thresholds are written: re-opening a finished run leaves its best.pt untouched.
        if evaluation.thresholds is not None and best_ckpt["thresholds"] != evaluation.thresholds.tolist():
            best_ckpt["thresholds"] = evaluation.thresholds.tolist()
            save_atomic(best_ckpt, out / "best.pt")
        write_results(out, evaluation, plan.note, best["epoch"], config.epochs, ctx.world_size,
                      time.perf_counter() - start_time, log)
    dist.barrier(ctx)
    return RunResult(out, config, pd.DataFrame(history), best["epoch"], plan.note, evaluation.val, evaluation.test,
                     evaluation.test_tuned, evaluation.thresholds, time.perf_counter() - start_time, recipe.method,
                     recipe.method_config)


@dataclass(frozen=True)
class Evaluation:
    """The selected model on validation and test."""

    val: PARMetrics
    test: PARMetrics
    test_tuned: PARMetrics | None
    thresholds: np.ndarray | None  # (A,) tuned on validation
    test_preds: Predictions


def evaluate_selected(annotations, val_preds: Predictions, test_preds: Predictions, threshold: float,
                      tune: bool) -> Evaluation:
    """Validation and test metrics at the fixed threshold, plus test at thresholds tuned on validation."""
    val = split_metrics(annotations, val_preds, threshold)
    thresholds = tune_thresholds(annotations.labels[val_preds.rows], val_preds.probs, default=threshold) \
        if tune else None
    test = split_metrics(annotations, test_preds, threshold)
    tuned = split_metrics(annotations, test_preds, thresholds) if thresholds is not None else None
    return Evaluation(val, test, tuned, thresholds, test_preds)


def write_results(out: Path, evaluation: Evaluation, selection: str, best_epoch: int, epochs: int,
                  world_size: int, wall_s: float, log) -> None:
    """``metrics.json``, ``test_per_attribute.csv`` and ``test_predictions.npz`` of a finished run."""
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
    preds = evaluation.test_preds
    write_atomic(out / "test_predictions.npz", lambda tmp: np.savez(tmp, logits=preds.logits, rows=preds.rows))
    log(f"best epoch {best_epoch} ({selection})")
    log("test  " + "  ".join(f"{k} {v:.2f}" for k, v in test.summary().items() if k in METRIC_KEYS))
    if tuned is not None:
        log("tuned " + "  ".join(f"{k} {v:.2f}" for k, v in tuned.summary().items() if k in METRIC_KEYS))


def _epoch_line(row: dict, epochs: int, split: str) -> str:
    metrics = "  ".join(f"{k} {row[f'{split}_{k}']:.2f}" for k in METRIC_KEYS)
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"lr {row['lr']:.1e}  {split}: {metrics}  {row['train_img_s']:.0f} img/s  "
            f"{row['train_s'] + row['eval_s']:.0f} s{'  *' if row['best'] else ''}")
