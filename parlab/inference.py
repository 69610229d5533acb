"""Using a trained model: load a checkpoint, predict images, evaluate a split.

``parlab.predict(checkpoint, images_or_folder)`` gives a DataFrame with one
row per image: ``prob.<attribute>`` probabilities and ``label.<attribute>``
0/1 decisions at the checkpoint's thresholds (tuned ones when the run tuned
them, else the configured fixed threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from parlab.data import load_dataset
from parlab.data.images import PARImageDataset, PARTransform, load_rgb
from parlab.errors import ConfigError, MissingFileError
from parlab.methods.registry import method_for
from parlab.runs import BEST
from parlab.training.record import method_name_of
from parlab.metrics import PARMetrics, pedestrian_metrics
from parlab.training.checkpoint import CheckpointError, check_attributes, load_checkpoint
from parlab.training.config import DataConfig, RunFields
from parlab.training.distributed import DistContext, resolve_device
from parlab.training.evaluation import autocast, eval_loader, predict_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module  # in eval mode, on ``device``
    run: RunFields  # the run that trained it
    data: DataConfig  # the data it was trained on (dataset, image size, fixed threshold)
    model_config: Any  # the config describing the network (FRDL: its stage 1's)
    method_name: str  # what trained it: "baseline", "FRDL", "PromptPAR"...
    attributes: tuple[str, ...]
    thresholds: np.ndarray  # (A,)
    device: torch.device
    source: Path
    transform: PARTransform  # the evaluation transform the model was trained with


def load_model(checkpoint: str | Path, device: str = "cpu", clip_weights: str | None = None) -> LoadedModel:
    """Rebuild the model of a ``best.pt`` (or ``last.pt``) checkpoint; weights_only loading, strict keys.

    A run folder stands for its ``best.pt``. A PromptPAR checkpoint holds only its trained parameters:
    the base CLIP file is read from where the run found it, or from ``clip_weights``, and must be the
    same file (same sha256).
    """
    path = Path(checkpoint)
    path = path / BEST if path.is_dir() else path
    ckpt = load_checkpoint(path)
    method_name = method_name_of(ckpt)
    task_class = method_for(method_name).task_class()
    if "model" not in ckpt or (ckpt.get("kind") == "training" and not task_class.trains_whole_model):
        raise CheckpointError(f"{path}: a {ckpt.get('kind')!r} checkpoint of this method holds no complete model; "
                              "load the run's best.pt")
    task = task_class.from_record(ckpt, str(path), clip_weights=clip_weights)
    attributes = tuple(ckpt["attributes"])
    # A training checkpoint evaluates its EMA weights when the run kept them, like the run itself.
    state = ckpt["ema"] if ckpt.get("kind") == "training" and ckpt.get("ema") is not None else ckpt["model"]
    dev = resolve_device(device)
    model = task.load_selected(state, len(attributes), str(path), dev)
    thresholds = ckpt.get("thresholds") or [task.data.threshold] * len(attributes)
    return LoadedModel(model, task.run, task.data, task.model_config, method_name, attributes,
                       np.asarray(thresholds, dtype=np.float64), dev, path, task.transform(train=False))


def checked_threshold(threshold: float) -> float:
    """``threshold`` when it is a decision threshold, a number in (0, 1); a one-line ConfigError otherwise."""
    value = float(threshold)
    if not 0.0 < value < 1.0:  # NaN fails this too
        raise ConfigError(f"threshold must be a number in (0, 1), got {threshold}")
    return value


def list_images(images_or_folder) -> list[Path]:
    """Image files from a folder (sorted, recursive), one path, or a list of paths."""
    if isinstance(images_or_folder, (str, Path)):
        p = Path(images_or_folder)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise MissingFileError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            return files
        items = [p]
    else:
        items = [Path(i) for i in images_or_folder]
    missing = [str(i) for i in items if not i.is_file()]
    if missing:
        raise MissingFileError(f"image not found: {', '.join(missing[:5])}")
    return items


class _Files(Dataset):
    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_rgb(self.files[i]))


@torch.no_grad()
def predict(checkpoint: str | Path | LoadedModel, images_or_folder, device: str = "cpu", batch_size: int = 64,
            threshold: float | None = None, num_workers: int = 0) -> pd.DataFrame:
    """Per-attribute probabilities and labels for images.

    Args:
        checkpoint: a checkpoint path or a :class:`LoadedModel`.
        images_or_folder: a folder (searched recursively), an image path or a list of paths.
        threshold: one threshold for every attribute, overriding the checkpoint's.

    Returns:
        DataFrame indexed by image path with columns ``prob.<attr>`` and ``label.<attr>``.
    """
    threshold = None if threshold is None else checked_threshold(threshold)  # before any work
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device)
    files = list_images(images_or_folder)
    loader = DataLoader(_Files(files, loaded.transform),
                        batch_size=batch_size, num_workers=num_workers)
    probs = []
    for x in loader:
        with autocast(loaded.device, loaded.run.amp):
            probs.append(torch.sigmoid(loaded.model(x.to(loaded.device)).float()).cpu())
    p = torch.cat(probs).numpy()
    thr = loaded.thresholds if threshold is None else np.full(len(loaded.attributes), threshold)
    frame = pd.DataFrame(p, columns=[f"prob.{a}" for a in loaded.attributes], index=[str(f) for f in files])
    labels = pd.DataFrame((p > thr).astype(np.int8), columns=[f"label.{a}" for a in loaded.attributes],
                          index=frame.index)
    out = pd.concat([frame, labels], axis=1)
    out.index.name = "image"
    return out


def evaluate(checkpoint: str | Path | LoadedModel, dataset: str | None = None, root: str | None = None,
             split: str = "test", device: str = "cpu", batch_size: int = 128,
             threshold: float | None = None, num_workers: int = 0) -> PARMetrics:
    """PAR metrics of a checkpoint on a split, in one process (dataset and root default to the run's)."""
    threshold = None if threshold is None else checked_threshold(threshold)  # before any work
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device)
    cfg = loaded.data
    annotations = load_dataset(dataset or cfg.dataset, root or cfg.root, cfg.partition,
                               links_outside=cfg.links_outside)
    check_attributes(loaded.attributes, annotations.attributes, str(loaded.source), annotations.name)
    data = PARImageDataset(annotations, split, loaded.transform)
    ctx = DistContext(0, 1, 0, loaded.device)
    preds = predict_dataset(loaded.model, eval_loader(data, batch_size, num_workers, ctx), ctx, loaded.run.amp)
    thr = cfg.threshold if threshold is None else threshold
    return pedestrian_metrics(annotations.labels[preds.rows], preds.probs, threshold=thr,
                              attributes=annotations.attributes)
