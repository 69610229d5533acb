"""Forward passes over a split, gathered over ranks, and their metrics."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from parlab.data.images import PARImageDataset
from parlab.training.distributed import DistContext, all_gather_rows
from parlab.training.sampling import ShardSampler


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` ("none", "bf16", "fp16")."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU")
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


@torch.no_grad()
def predict_dataset(model: nn.Module, loader: DataLoader, ctx: DistContext, amp: str = "none",
                    channels_last: bool = False, progress: bool = False, desc: str = "eval") -> Predictions:
    """Logits of every image of ``loader``'s dataset, gathered from all ranks, in dataset order."""
    from tqdm.auto import tqdm

    model.eval()
    logits, rows = [], []
    for x, _, row in tqdm(loader, leave=False, desc=desc, disable=not (progress and ctx.is_main)):
        x = x.to(ctx.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            out = model(x)
        logits.append(out.float())
        rows.append(row.to(ctx.device))
    num_attributes = loader.dataset.annotations.num_attributes
    local = torch.cat(logits) if logits else torch.zeros(0, num_attributes, device=ctx.device)
    local_rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=ctx.device)
    all_logits = all_gather_rows(local, ctx).cpu().numpy()
    all_rows = all_gather_rows(local_rows, ctx).cpu().numpy()
    order = pd.Index(all_rows).get_indexer(loader.dataset.rows)
    if (order < 0).any():
        raise RuntimeError("gathered predictions miss some images of the split")
    return Predictions(all_logits[order], all_rows[order])
