"""Images of a dataset as a torch ``Dataset``, with the standard PAR transforms.

Images are always converted to RGB (PETA has palette and greyscale PNGs). A
missing or unreadable image raises :class:`DatasetError` naming the file;
``on_missing="skip"`` drops missing images up front and counts them instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image fully (so truncation is caught here) and convert it to RGB."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from None


def build_transform(
    image_size: tuple[int, int] = (256, 192),
    train: bool = False,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    pad: int = 10,
) -> T.Compose:
    """Rethinking_of_PAR's transforms: resize (+ pad, random crop, flip when training), normalise.

    Args:
        image_size: (height, width) fed to the model.
    """
    steps: list = [T.Resize(tuple(image_size))]
    if train:
        steps += [T.Pad(pad), T.RandomCrop(tuple(image_size)), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class PARImageDataset(Dataset):
    """(image, labels, row) triples of one split.

    ``__getitem__`` returns the transformed image (3, H, W), its labels (A,)
    as float32 (-1 kept for ignored entries) and its row in the annotations.
    The key is a position, or a ``(position, seed)`` pair from
    :class:`parlab.training.sampling.EpochSampler`, in which case the random
    augmentation is drawn from that seed alone.
    """

    def __init__(
        self,
        annotations: Annotations,
        split: str | np.ndarray,
        transform=None,
        on_missing: str = "error",
    ) -> None:
        """``split`` is a split name or an array of annotation rows (e.g. a carved validation subset)."""
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.annotations = annotations
        self.split = split if isinstance(split, str) else "custom"
        self.transform = transform or build_transform()
        rows = annotations.split(split) if isinstance(split, str) else np.asarray(split, dtype=np.int64)
        self.num_skipped = 0
        if on_missing == "skip":
            present = np.array([annotations.image_path(r).is_file() for r in rows], dtype=bool)
            self.num_skipped = int((~present).sum())
            rows = rows[present]
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self) -> np.ndarray:
        """(n, A) labels in dataset order."""
        return self.annotations.labels[self.rows]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        row = int(self.rows[i])
        img = load_rgb(self.annotations.image_path(row))
        if seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.transform(img)
        return x, torch.from_numpy(self.annotations.labels[row].astype(np.float32)), row


def image_sizes(annotations: Annotations, split: str | None = None, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """(n, 2) (height, width) of up to ``limit`` images, read from their headers."""
    paths = annotations.image_paths(split)
    if limit is not None and limit < len(paths):
        pick = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in np.sort(pick)]
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as img:
                sizes.append(img.size[::-1])
        except FileNotFoundError:
            raise DatasetError(f"{p}: image not found") from None
    return np.array(sizes, dtype=np.int64).reshape(-1, 2)
