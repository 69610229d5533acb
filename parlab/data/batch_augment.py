"""The PAR training augmentation on a whole uint8 batch, on whatever device it lives.

The same augmentation as :class:`parlab.data.images.PARTransform` (zero pad,
random crop back to size, horizontal flip with probability 1/2, normalise),
applied to a (B, H, W, 3) uint8 batch at the training resolution in a few
tensor operations instead of per image in PIL. The draws are made on the CPU
before the batch moves, so they do not depend on the device:
:func:`draws_from_seeds` draws them from per-image seeds exactly as
``PARTransform`` does (the cached training path gives the very pixels of the
decoding one), :func:`draws_from_generator` from a ``torch.Generator``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Draws:
    """Per-image crop offsets into the padded image, in [0, 2 * pad], and flips: each (B,) on the CPU."""

    dy: torch.Tensor  # int64
    dx: torch.Tensor  # int64
    flip: torch.Tensor  # bool


def draws_from_seeds(seeds, pad: int) -> Draws:
    """The draws ``PARTransform(train=True)`` makes for images augmented with ``random.Random(seed)``."""
    dy, dx, flip = [], [], []
    for seed in seeds:
        rng = random.Random(int(seed))
        dx.append(rng.randint(0, 2 * pad))  # PARTransform: left first, then top, then the flip
        dy.append(rng.randint(0, 2 * pad))
        flip.append(rng.random() < 0.5)
    return Draws(torch.tensor(dy, dtype=torch.int64), torch.tensor(dx, dtype=torch.int64), torch.tensor(flip))


def draws_from_generator(generator: torch.Generator, batch: int, pad: int) -> Draws:
    """Draws for ``batch`` images from ``generator`` (a function of its seed alone)."""
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    return Draws(dy, dx, torch.rand(batch, generator=generator) < 0.5)


def augment_batch(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 0,
                  draws: Draws | None = None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised with ``mean``/``std`` (of [0, 1] pixels).

    With ``draws``, each image is zero-padded by ``pad`` pixels, cropped back to (H, W) at the drawn offset
    and flipped left-right where drawn; without, it is only normalised. The arithmetic is torchvision's
    ``ToTensor`` then ``Normalize``, so the result equals theirs bit for bit.
    """
    b, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2)  # (B, 3, H, W) uint8: crop and flip move bytes, not floats
    if draws is not None:
        device = x.device
        dy, dx, flip = draws.dy.to(device), draws.dx.to(device), draws.flip.to(device)
        if pad:
            padded = F.pad(x, (pad, pad, pad, pad))
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, W)
            batch = torch.arange(b, device=device)[:, None, None, None]
            channel = torch.arange(3, device=device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.float().div(255).sub(mean_t).div(std_t)
