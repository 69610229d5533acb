"""Forward passes over a split, gathered over ranks, and their metrics.

:func:`evaluate_selected` is a finished run's evaluation: the selected model's
validation and test metrics at the fixed threshold, and test at thresholds
tuned on validation.
"""

from __future__ import annotations

import contextlib
import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from parlab.data.images import PARImageDataset
from parlab.errors import ConfigError, RunFolderError
from parlab.files import write_atomic
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.training.distributed import DistContext, all_gather_rows
from parlab.training.sampling import ShardSampler
from parlab.training.thresholds import tune_thresholds


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` ("none", "bf16", "fp16")."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def eval_loader(dataset: PARImageDataset, batch_size: int, num_workers: int, ctx: DistContext) -> DataLoader:
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=ctx.device.type == "cuda")


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # (n, A) float32, in the dataset's row order
    rows: np.ndarray  # (n,) annotation rows

    @functools.cached_property  # metrics, threshold tuning and reports all read it
    def probs(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


def save_predictions(path: Path, preds: Predictions) -> None:
    """Write ``preds`` to ``path`` (.npz: ``logits`` (n, A), ``rows`` (n,)) atomically."""
    write_atomic(path, lambda tmp: np.savez(tmp, logits=preds.logits, rows=preds.rows))


def load_predictions(path: Path, num_rows: int | None = None, num_attributes: int | None = None) -> Predictions:
    """Predictions written by :func:`save_predictions`, checked against the dataset they index.

    ``num_rows``, ``num_attributes``: the dataset's annotation rows and attributes, when known. Raises
    :class:`~parlab.errors.RunFolderError` naming the file for an unreadable file or one that does not fit.
    """
    try:
        with np.load(path, allow_pickle=False) as saved:
            logits, rows = saved["logits"], saved["rows"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise RunFolderError(f"{path}: not readable as saved predictions ({exc})") from exc
    problem = None
    if logits.ndim != 2 or rows.ndim != 1 or len(rows) != len(logits) or not np.issubdtype(rows.dtype, np.integer):
        problem = f"logits {logits.shape} and rows {rows.shape} ({rows.dtype}) do not pair up"
    elif num_attributes is not None and logits.shape[1] != num_attributes:
        problem = f"{logits.shape[1]} attributes, the dataset has {num_attributes}"
    elif num_rows is not None and len(rows) and (rows.min() < 0 or rows.max() >= num_rows):
        problem = f"rows outside the dataset's {num_rows} annotations"
    if problem:
        raise RunFolderError(f"{path}: {problem}; was the dataset changed since the run?")
    return Predictions(logits, rows)


@torch.no_grad()
def forward_split(module: nn.Module, loader: DataLoader, ctx: DistContext, amp: str = "none",
                  channels_last: bool = False, progress: bool = False, desc: str = "eval") -> tuple[torch.Tensor, np.ndarray]:
    """``module`` on every image of ``loader``'s dataset, gathered from all ranks, in dataset order.

    Returns outputs (n, ...) as float32 on the CPU and their annotation rows (n,). The loader may
    use any sampler, including one that pads shards with repeats (repeats are dropped).
    """
    from tqdm.auto import tqdm

    module.eval()
    outputs, rows = [], []
    for x, _, row in tqdm(loader, leave=False, desc=desc, disable=not (progress and ctx.is_main)):
        x = x.to(ctx.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            outputs.append(module(x).float())
        rows.append(row.to(ctx.device))
    if not outputs:  # a rank with no images still has to join the gathers, with the right width
        with autocast(ctx.device, amp):
            width = module(loader.dataset[0][0].unsqueeze(0).to(ctx.device)).shape[1:]
        outputs, rows = [torch.zeros(0, *width, device=ctx.device)], [torch.zeros(0, dtype=torch.long, device=ctx.device)]
    gathered = all_gather_rows(torch.cat(outputs), ctx).cpu()
    gathered_rows = all_gather_rows(torch.cat(rows), ctx).cpu().numpy()
    unique, first = np.unique(gathered_rows, return_index=True)
    wanted = np.asarray(loader.dataset.rows)
    pos = np.searchsorted(unique, wanted).clip(max=max(len(unique) - 1, 0))
    if len(unique) == 0 or (unique[pos] != wanted).any():
        raise RuntimeError("gathered outputs miss some images of the split")
    take = first[pos]
    return gathered[torch.from_numpy(take)], gathered_rows[take]


def predict_dataset(model: nn.Module, loader: DataLoader, ctx: DistContext, amp: str = "none",
                    channels_last: bool = False, progress: bool = False, desc: str = "eval") -> Predictions:
    """Logits of every image of ``loader``'s dataset, gathered from all ranks, in dataset order."""
    logits, rows = forward_split(model, loader, ctx, amp, channels_last, progress, desc)
    return Predictions(logits.numpy(), rows)


def split_metrics(annotations, preds: Predictions, threshold) -> PARMetrics:
    """PAR metrics of predictions against the annotations' labels of their rows."""
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=threshold,
                              attributes=annotations.attributes)


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
