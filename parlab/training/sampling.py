"""Deterministic per-epoch sampling with per-sample augmentation seeds.

The sampler yields ``(index, seed)`` pairs: the shuffled order and the random
augmentation of every image depend only on (run seed, epoch, position), not on
the number of DataLoader workers, the rank that loads it or whether the run
was resumed. That is what makes resuming from a checkpoint exact.
Under DistributedDataParallel each rank takes every world_size-th position of
the same permutation (padded by wrapping so all ranks step together, as
torch's DistributedSampler does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, epoch, stream), well mixed."""
    ss = np.random.SeedSequence([seed, epoch, stream])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Training order: a seeded permutation per epoch, sharded over ranks; yields (index, seed)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self):
        rng = np.random.Generator(np.random.PCG64(epoch_seed(self.seed, self.epoch, 1)))
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        total = len(self) * self.world_size
        if total > self.size:
            order = np.concatenate([order, order[: total - self.size]])
        sample_seeds = rng.integers(0, 2**62, size=total)
        for pos in range(self.rank, total, self.world_size):
            yield int(order[pos]), int(sample_seeds[pos])


class ShardSampler(Sampler):
    """Evaluation order: dataset order, every world_size-th item from ``rank``; no padding, no repeats."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def train_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int, ctx) -> DataLoader:
    """Training batches: the epoch's seeded permutation (call ``loader.sampler.set_epoch``), sharded by rank.

    ``ctx``: the run's :class:`~parlab.training.distributed.DistContext` (rank, world size, device).
    """
    sampler = EpochSampler(len(dataset), seed, ctx.rank, ctx.world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=drops_last_batch(len(sampler), batch_size), pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        # Workers outlive the epoch (the order still comes from the sampler, in this process): no restart cost.
        persistent_workers=num_workers > 0,
    )


def drops_last_batch(samples: int, batch_size: int) -> bool:
    # BatchNorm cannot train on a batch of one; drop a final batch of exactly one image.
    return samples % batch_size == 1
