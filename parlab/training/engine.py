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

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from parlab.data import load_dataset
from parlab.data.images import PARImageDataset, build_transform
from parlab.files import write_atomic, write_json
from parlab.labelstats import positive_ratio
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.models import build_model
from parlab.training import distributed as dist
from parlab.training.checkpoint import (
    FORMAT,
    CheckpointError,
    check_attributes,
    library_versions,
    load_checkpoint,
    load_state_strict,
    save_atomic,
)
from parlab.training.config import TrainConfig
from parlab.training.evaluation import Predictions, autocast, eval_loader, predict_dataset
from parlab.training.losses import PARLoss
from parlab.training.optim import build_optimizer, build_scheduler, steps_per_batch
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


def model_for(config: TrainConfig, num_attributes: int, pretrained: bool = True) -> nn.Module:
    """The config's model; ``pretrained=False`` skips the weights file (a checkpoint will be loaded)."""
    return build_model(config.backbone, num_attributes, config.head, config.weights if pretrained else None,
                       config.drop_rate, config.image_size)


def _out(config: TrainConfig) -> Path:
    return Path(config.output_dir)


def _prepare_folder(config: TrainConfig, existing: str, ctx: dist.DistContext) -> dict | None:
    """Check the run folder against ``existing``; return the checkpoint to resume from, if any."""
    if existing not in ("error", "resume", "overwrite"):
        raise ValueError(f"existing must be 'error', 'resume' or 'overwrite', got {existing!r}")
    out = _out(config)
    last, previous = out / "last.pt", out / "previous.pt"
    has_run = last.exists() or previous.exists()
    if has_run and existing == "error":
        raise FileExistsError(
            f"{out} already holds a run; resume it (existing='resume', parlab train --resume) or start "
            "again (existing='overwrite', parlab train --overwrite)"
        )
    if existing == "overwrite":
        dist.barrier(ctx)
        if ctx.is_main:
            for name in ("last.pt", "previous.pt", "best.pt", "log.csv", "metrics.json", "config.json",
                         "test_per_attribute.csv", "test_predictions.npz"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
        dist.barrier(ctx)
        return None
    if existing == "resume" and has_run:
        # A kill between the two final renames of save_atomic leaves only previous.pt.
        ckpt = load_checkpoint(last if last.exists() else previous)
        saved = TrainConfig.from_dict(ckpt["config"], source=str(last))
        diff = saved.differences(config, ignore=RESUMABLE_CHANGES)
        if diff:
            raise CheckpointError(
                f"{last}: cannot resume with a different config (checkpoint vs requested):\n  " + "\n  ".join(diff)
            )
        return ckpt
    return None


def _train_loader(dataset: PARImageDataset, config: TrainConfig, ctx: dist.DistContext) -> DataLoader:
    sampler = EpochSampler(len(dataset), config.seed, ctx.rank, ctx.world_size)
    # BatchNorm cannot train on a batch of one; drop a final batch of exactly one image.
    drop_last = len(sampler) % config.batch_size == 1
    return DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
        drop_last=drop_last, pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )


def _metrics(annotations, preds: Predictions, threshold) -> PARMetrics:
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=threshold,
                              attributes=annotations.attributes)


def _eval_model(model: nn.Module, ema) -> nn.Module:
    """The weights that are evaluated and selected: the EMA copy when there is one."""
    return model if ema is None else ema.module


def _model_checkpoint(model: nn.Module, config: TrainConfig, attributes, epoch: int, metrics: dict,
                      thresholds: np.ndarray | None, note: str) -> dict:
    return {
        "format": FORMAT,
        "kind": "model",
        "epoch": epoch,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "attributes": list(attributes),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "metrics": metrics,
        "selection": note,
        "versions": library_versions(),
    }


def train(config: TrainConfig, existing: str = "error", progress: bool = True, log=None) -> RunResult:
    """Train, select on validation, test once; see the module docstring for what is written.

    Args:
        config: the experiment.
        existing: what to do when ``output_dir`` already holds a run: "error", "resume" (continue from
            its last checkpoint; a finished run is only re-evaluated) or "overwrite".
        progress: tqdm bars per epoch (rank 0 only).
        log: where the one-line-per-epoch summary goes (default: printed and flushed, so that
            redirected output of long runs shows each epoch as it ends).
    """
    ctx = dist.setup(config.device)
    if not ctx.is_main:
        log = lambda *_: None  # noqa: E731
    elif log is None:
        log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        return _train(config, existing, progress, log, ctx)
    finally:
        dist.teardown(ctx)


def _train(config: TrainConfig, existing: str, progress: bool, log, ctx: dist.DistContext) -> RunResult:
    from timm.utils import ModelEmaV3
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    out = _out(config)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    resume = _prepare_folder(config, existing, ctx)
    device = ctx.device

    annotations = load_dataset(config.dataset, config.root, config.partition)
    plan: SplitPlan = resolve_splits(annotations, config)
    train_ratio = positive_ratio(annotations.labels[plan.train])

    seed_everything(config.seed)  # same initial weights on every rank
    if resume is not None:
        check_attributes(resume["attributes"], annotations.attributes, str(out / "last.pt"), annotations.name)
    # A resumed run takes its weights from the checkpoint, not from the pretrained file.
    model = model_for(config, annotations.num_attributes, pretrained=resume is None).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema else None
    train_set = PARImageDataset(annotations, plan.train, build_transform(config.image_size, train=True))
    loader = _train_loader(train_set, config, ctx)
    eval_tf = build_transform(config.image_size, train=False)
    sets = {"val": PARImageDataset(annotations, plan.val, eval_tf),
            "test": PARImageDataset(annotations, plan.test, eval_tf)}
    loaders = {k: eval_loader(v, config.eval_batch_size, config.num_workers, ctx) for k, v in sets.items()}

    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    criterion = PARLoss(config.loss, train_ratio).to(device)
    val_criterion = PARLoss(config.loss, train_ratio)  # on the gathered CPU logits

    start_epoch, best = 0, {"epoch": 0, "value": -np.inf}
    history: list[dict] = []
    if resume is not None:
        load_state_strict(model, resume["model"], "last.pt")
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if ema is not None:
            load_state_strict(ema.module, resume["ema"], "last.pt (EMA)")
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
        write_json(out / "config.json", record)

    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ctx.distributed else model
    per_step = steps_per_batch(config)
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
        val = _metrics(annotations, val_preds, config.threshold)
        val_targets = torch.from_numpy(annotations.labels[val_preds.rows].astype(np.float32))
        val_loss = float(val_criterion(torch.from_numpy(val_preds.logits), val_targets))
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
               "lr": optimizer.param_groups[0]["lr"]}
        row |= {f"val_{k}": v for k, v in val.summary().items() if k in METRIC_KEYS}
        selected = val.ma
        if config.select_on == "test":
            test_now = _metrics(annotations, predict_dataset(evaluated, loaders["test"], ctx, config.amp,
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
                save_atomic(_model_checkpoint(evaluated, config, annotations.attributes, epoch + 1,
                                              val.summary(), None, plan.note), out / "best.pt")
            save_atomic({
                "format": FORMAT, "kind": "training", "epoch": epoch + 1, "model": model.state_dict(),
                "ema": None if ema is None else ema.module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng": rng_state(), "best": best, "history": history, "config": config.to_dict(),
                "attributes": list(annotations.attributes), "versions": library_versions(),
                "thresholds": [config.threshold] * annotations.num_attributes,  # tuned ones go to best.pt
            }, out / "last.pt", keep_previous=True)
            runlog.append(row)
        dist.barrier(ctx)
        log(_epoch_line(row, config.epochs, "test" if config.select_on == "test" else "val"))

    if runlog is not None:
        runlog.close()
    return _finish(config, annotations, plan, loaders, best, history, ctx, start_time, progress, log)


def _finish(config: TrainConfig, annotations, plan: SplitPlan, loaders: dict, best: dict, history: list,
            ctx: dist.DistContext, start_time: float, progress: bool, log) -> RunResult:
    """Load the selected epoch, tune thresholds on validation if asked, evaluate test once, write results."""
    out = _out(config)
    best_ckpt = load_checkpoint(out / "best.pt", map_location="cpu")
    model = model_for(config, annotations.num_attributes, pretrained=False)
    load_state_strict(model, best_ckpt["model"], str(out / "best.pt"))
    model = model.to(ctx.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    args = (ctx, config.amp, config.channels_last, progress)
    val_preds = predict_dataset(model, loaders["val"], *args)
    val = _metrics(annotations, val_preds, config.threshold)
    thresholds = tune_thresholds(annotations.labels[val_preds.rows], val_preds.probs, default=config.threshold) \
        if config.tune_thresholds else None
    test_preds = predict_dataset(model, loaders["test"], *args, desc="test")
    test = _metrics(annotations, test_preds, config.threshold)
    tuned = _metrics(annotations, test_preds, thresholds) if thresholds is not None else None
    wall = time.perf_counter() - start_time
    if ctx.is_main:
        results = {
            "selection": plan.note, "best_epoch": best["epoch"], "epochs": config.epochs,
            "val": val.summary(), "test": test.summary(),
            "test_tuned_thresholds": None if tuned is None else tuned.summary(),
            "thresholds": None if thresholds is None else thresholds.tolist(),
            "num_degenerate_test": test.num_degenerate, "world_size": ctx.world_size, "wall_s_this_call": wall,
        }
        write_json(out / "metrics.json", results)
        table = test.per_attribute.copy()
        if tuned is not None:
            table["tuned_threshold"] = thresholds
            table["tuned_tpr"], table["tuned_tnr"] = tuned.per_attribute["tpr"], tuned.per_attribute["tnr"]
        write_atomic(out / "test_per_attribute.csv", table.to_csv)
        write_atomic(out / "test_predictions.npz",
                     lambda tmp: np.savez(tmp, logits=test_preds.logits, rows=test_preds.rows))
        if thresholds is not None:
            best_ckpt["thresholds"] = thresholds.tolist()
            save_atomic(best_ckpt, out / "best.pt")
        log(f"best epoch {best['epoch']} ({plan.note})")
        log("test  " + "  ".join(f"{k} {v:.2f}" for k, v in test.summary().items() if k in METRIC_KEYS))
        if tuned is not None:
            log("tuned " + "  ".join(f"{k} {v:.2f}" for k, v in tuned.summary().items() if k in METRIC_KEYS))
    dist.barrier(ctx)
    return RunResult(out, config, pd.DataFrame(history), best["epoch"], plan.note, val, test, tuned, thresholds, wall)


def _epoch_line(row: dict, epochs: int, split: str) -> str:
    metrics = "  ".join(f"{k} {row[f'{split}_{k}']:.2f}" for k in METRIC_KEYS)
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"lr {row['lr']:.1e}  {split}: {metrics}  {row['train_img_s']:.0f} img/s  "
            f"{row['train_s'] + row['eval_s']:.0f} s{'  *' if row['best'] else ''}")
