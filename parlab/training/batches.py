"""Where a run's batches come from: decoded image files, or the uint8 image cache augmented on the device.

:func:`training_batches` and :func:`evaluation_batches` give every method its
batches. Without an :class:`~parlab.data.image_cache.ImageCache` they are
DataLoaders over :class:`~parlab.data.images.PARImageDataset` (each image
decoded, resized and augmented on the CPU, every epoch). With one they are
:class:`DeviceBatches`: the epoch's order and per-image seeds come from the same
:class:`~parlab.training.sampling.EpochSampler`, a background thread gathers
the next uint8 batch from the memory map (pinned, when the device is a GPU)
while the current one trains, and padding, cropping, flipping and normalising
happen on the device (:mod:`parlab.data.batch_augment`). Both give the same
tensors for the same (seed, epoch), so a run's numbers do not depend on
which one fed it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from parlab.data.annotations import Annotations
from parlab.data.batch_augment import augment_batch, draws_from_seeds
from parlab.data.image_cache import ImageCache
from parlab.data.images import PARImageDataset, PARTransform
from parlab.training.distributed import DistContext
from parlab.training.evaluation import eval_loader
from parlab.training.sampling import EpochSampler, ShardSampler, drops_last_batch, train_loader


def training_batches(annotations: Annotations, rows: np.ndarray, transform: PARTransform, batch_size: int,
                     seed: int, num_workers: int, ctx: DistContext, cache: ImageCache | None = None):
    """The training split's batches ``(x, y, rows)``; call ``.sampler.set_epoch(epoch)`` before each epoch."""
    dataset = PARImageDataset(annotations, rows, transform)
    if cache is None:
        return train_loader(dataset, batch_size, seed, num_workers, ctx)
    sampler = EpochSampler(len(dataset), seed, ctx.rank, ctx.world_size)
    return DeviceBatches(dataset, cache, sampler, batch_size, ctx, drop_last=drops_last_batch(len(sampler),
                                                                                             batch_size))


def evaluation_batches(annotations: Annotations, rows: np.ndarray, transform: PARTransform, batch_size: int,
                       num_workers: int, ctx: DistContext, cache: ImageCache | None = None, sampler=None):
    """Batches ``(x, y, rows)`` of ``rows`` in order, sharded over ranks (or in ``sampler``'s order)."""
    dataset = PARImageDataset(annotations, rows, transform)
    if cache is None:
        if sampler is None:
            return eval_loader(dataset, batch_size, num_workers, ctx)
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          pin_memory=ctx.device.type == "cuda")
    sampler = sampler or ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return DeviceBatches(dataset, cache, sampler, batch_size, ctx)


class DeviceBatches:
    """Batches of a :class:`PARImageDataset`'s images read from the image cache and augmented on the device.

    Iterating yields ``(x (B, 3, H, W) float32, y (B, A) float32, rows (B,) int64)``, x and y on the run's
    device. ``sampler`` yields positions, or (position, seed) pairs whose seeds augment as the dataset's
    ``PARTransform`` would; ``dataset`` is kept so that code reading ``loader.dataset`` works unchanged.
    """

    def __init__(self, dataset: PARImageDataset, cache: ImageCache, sampler, batch_size: int, ctx: DistContext,
                 drop_last: bool = False) -> None:
        transform = dataset.transform
        if not isinstance(transform, PARTransform) or tuple(transform.image_size) != tuple(cache.image_size) \
                or transform.square != cache.square:
            raise ValueError(f"the image cache {cache.folder} holds {cache.image_size} images "
                             f"({'letterboxed' if cache.square else 'stretched'}); batches from it need a "
                             "PARTransform of that size and geometry")
        self.dataset, self.cache, self.sampler, self.batch_size = dataset, cache, sampler, batch_size
        self.device, self.drop_last = ctx.device, drop_last
        self.pin = ctx.device.type == "cuda"
        self.labels = torch.from_numpy(dataset.annotations.labels.astype(np.float32))

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        keys = list(self.sampler)
        chunks = [keys[i:i + self.batch_size] for i in range(0, len(keys), self.batch_size)][:len(self)]
        if not chunks:
            return
        with ThreadPoolExecutor(1) as reader:  # the next batch is read while this one trains
            pending = reader.submit(self._host_batch, chunks[0])
            for i in range(len(chunks)):
                host = pending.result()
                if i + 1 < len(chunks):
                    pending = reader.submit(self._host_batch, chunks[i + 1])
                yield self._device_batch(*host)

    def _host_batch(self, keys: list) -> tuple:
        """uint8 images, labels, rows and draws of one batch, on the CPU (pinned for a GPU)."""
        seeded = bool(keys) and isinstance(keys[0], tuple)
        positions = np.array([k[0] if seeded else k for k in keys], dtype=np.int64)
        rows = self.dataset.rows[positions]
        images = self.cache.batch(rows)
        labels = self.labels[torch.from_numpy(rows)]
        if self.pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        transform = self.dataset.transform
        draws = draws_from_seeds([k[1] for k in keys], transform.pad) if seeded and transform.train else None
        return images, labels, torch.from_numpy(rows), draws

    def _device_batch(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, draws) -> tuple:
        t = self.dataset.transform
        images = images.to(self.device, non_blocking=True)
        x = augment_batch(images, t.mean, t.std, t.pad, draws)
        return x, labels.to(self.device, non_blocking=True), rows
