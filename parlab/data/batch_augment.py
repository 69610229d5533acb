"""The PAR training augmentation on a whole uint8 batch, on whatever device it lives.

The same augmentation as :class:`parlab.data.images.PARTransform` (zero pad,
random crop back to size, horizontal flip with probability 1/2, normalise),
applied to a (B, H, W, 3) uint8 batch at the training resolution in a few
tensor operations instead of per image in PIL. Offsets and flips are drawn
from a ``torch.Generator`` on the CPU, so they depend only on its seed (e.g.
``epoch_seed(seed, epoch)``), not on the device or the batch's history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_batch(images: torch.Tensor, generator: torch.Generator, mean: tuple[float, ...],
                  std: tuple[float, ...], pad: int, train: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised with ``mean``/``std`` (of [0, 1] pixels).

    With ``train``, each image is zero-padded by ``pad`` pixels, cropped back to (H, W) at an offset drawn in
    [0, 2 * pad] per axis, and flipped left-right with probability 1/2.
    """
    b, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
    if train:
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        if pad:
            padded = F.pad(x, (pad, pad, pad, pad))
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            channel = torch.arange(3, device=x.device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    scale = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255) / scale
