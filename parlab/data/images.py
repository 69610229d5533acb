"""Images of a dataset as a torch ``Dataset``, with the standard PAR transforms.

Images are always converted to RGB (PETA has palette and greyscale PNGs; 16-bit
greyscale is scaled to 8 bits). A missing, unreadable, truncated or oversized
image, or one in a mode with no RGB meaning, raises :class:`DatasetError` naming
the file. :class:`PARImageDataset` checks that every image of its split exists
when it is built, before any epoch; ``on_missing="skip"`` drops missing images
up front and counts them instead.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from parlab.data.annotations import Annotations
from parlab.data.errors import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Largest image load_rgb decodes (width * height): about 8192 x 8192, far above any pedestrian crop, and
# far below what a few-KB decompression bomb asks for. Checked from the header, before decoding. PIL's
# own process-wide limit (Image.MAX_IMAGE_PIXELS: a warning above, an error at twice that) is left as
# the user set it and still applies: the stricter of the two wins.
MAX_IMAGE_PIXELS = 64 * 2**20
MISSING_SHOWN = 5  # missing images named in PARImageDataset's error

# Modes PIL converts to RGB with their usual meaning. 16-bit greyscale is scaled separately (PIL's
# convert clips it at 255: a nearly white image); anything else (float "F", 32-bit colour ...) has no
# agreed 8-bit meaning and is refused rather than guessed.
_RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
                        "HSV"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # "I": how older PIL opens 16-bit PNGs
_READABLE_MODES = _RGB_MODES | _SIXTEEN_BIT_MODES


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as RGB; 16-bit greyscale (0..65535) is divided by 257, so 65535 -> 255."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float32)  # (H, W); numpy handles the big-endian "I;16B"
        img = Image.fromarray(np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def _image_error(path: Path, exc: Exception) -> DatasetError:
    """The one-line DatasetError for any failure opening or decoding image ``path``."""
    if isinstance(exc, DatasetError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return DatasetError(f"{path}: image not found")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DatasetError(f"{path}: refused as a possible decompression bomb ({exc})")
    text = " ".join(str(exc).split())  # one line
    return DatasetError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {text})")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image, decode it fully and at full resolution (so truncation is caught here), convert it to RGB.

    Never JPEG's reduced-scale decoding (``draft``): what a model sees then depends only on the file and the
    transform, so ONNX users reproduce it with any full decoder (:func:`parlab.export.preprocess`). Any failure
    (missing, truncated, not an image, more than :data:`MAX_IMAGE_PIXELS`, unsupported mode) is a
    :class:`DatasetError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{path}: {width}x{height} image exceeds the limit of {MAX_IMAGE_PIXELS} pixels "
                    "(parlab.data.images.MAX_IMAGE_PIXELS); refused as a possible decompression bomb"
                )
            if img.mode not in _READABLE_MODES:  # before decoding, not after
                raise DatasetError(f"{path}: unsupported image mode {img.mode!r}")
            img.load()
            return to_rgb(img)
    except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, struct.error, zlib.error ...)
        raise _image_error(path, exc) from None


def letterbox(img: Image.Image) -> Image.Image:
    """``img`` centred on a black square as wide as its longer side (its aspect ratio kept)."""
    side = max(img.size)
    if img.size == (side, side):
        return img
    square = Image.new("RGB", (side, side))
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


class PARTransform:
    """Rethinking_of_PAR's transforms: resize (+ pad, random crop, flip when training), normalise.

    ``transform(img, rng)`` draws the augmentation from ``rng`` (a
    :class:`random.Random`), so a per-sample seed fixes it without touching
    torch's global generator (re-seeding that per image would cost more than
    the augmentation itself). Padding then cropping back to size is done as one
    crop of a box that may leave the image: PIL fills outside pixels with black,
    as zero padding does. With ``square=True`` the image is first letterboxed to
    a square (:func:`letterbox`), as PromptPAR's public code does, and then resized.
    """

    def __init__(self, image_size: tuple[int, int], train: bool, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, pad: int = 10, square: bool = False) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))  # (height, width)
        self.train, self.pad, self.square = train, pad, square
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def resize(self, img: Image.Image) -> Image.Image:
        """The geometry before augmentation: (letterbox, then) resize to ``image_size``."""
        return T.functional.resize(letterbox(img) if self.square else img, list(self.image_size))

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """PIL image -> (3, H, W) float tensor."""
        img = self.resize(img)
        if self.train:
            rng = rng or random.Random()
            h, w = self.image_size
            left, top = rng.randint(0, 2 * self.pad) - self.pad, rng.randint(0, 2 * self.pad) - self.pad
            img = img.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.normalize(img)


def build_transform(image_size: tuple[int, int] = (256, 192), train: bool = False, **kwargs) -> PARTransform:
    """The standard PAR transform for (height, width) ``image_size``; see :class:`PARTransform`."""
    return PARTransform(image_size, train, **kwargs)


# Named input pipelines (DataConfig.transform): the geometry before augmentation and the input statistics.
# "par": Rethinking_of_PAR's (stretched to the input size, ImageNet statistics); "clip": the same geometry with
# CLIP's statistics (PromptPAR's default here); "promptpar": PromptPAR's public code (letterboxed to a square,
# then resized; mean and std 0.5).
TRANSFORMS: dict[str, dict] = {
    "par": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "square": False},
    "clip": {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711), "square": False},
    "promptpar": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "square": True},
}


def named_transform(name: str, image_size: tuple[int, int], train: bool, pad: int = 10) -> PARTransform:
    """The transform :data:`TRANSFORMS` names, at (height, width) ``image_size``."""
    if name not in TRANSFORMS:
        raise DatasetError(f"unknown transform {name!r}; known transforms: {', '.join(TRANSFORMS)}")
    return PARTransform(image_size, train, pad=pad, **TRANSFORMS[name])


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
        what = f"split {split!r}" if isinstance(split, str) else "the rows given"
        where = f"{annotations.name} ({annotations.annotation_file})"
        if not len(rows):
            raise DatasetError(f"{where}: {what} has no images")
        # Every image is looked for now, so that a missing one stops the run before its first epoch,
        # not hours into it; label-only use (statistics, plots of labels) never builds this dataset.
        missing = annotations.missing_images(rows)
        n_missing = int(missing.sum())
        if n_missing and (on_missing == "error" or n_missing == len(rows)):
            names = [str(annotations.image_names[r]) for r in rows[missing][:MISSING_SHOWN]]
            more = f" (+{n_missing - len(names)} more)" if n_missing > len(names) else ""
            raise DatasetError(
                f"{where}: {n_missing} of {len(rows)} images of {what} are missing under "
                f"{annotations.image_root}: {', '.join(names)}{more}"
            )
        self.num_skipped = n_missing  # only "skip" gets here with missing images
        self.rows = rows[~missing]

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
        elif isinstance(self.transform, PARTransform):
            x = self.transform(img, random.Random(seed))
        else:  # a torchvision transform draws from torch's global generator
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
        except Exception as exc:
            raise _image_error(p, exc) from None
    return np.array(sizes, dtype=np.int64).reshape(-1, 2)
