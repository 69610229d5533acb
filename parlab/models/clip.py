"""CLIP models from open_clip by name, with weights only from local files.

Besides open_clip's own architectures (``ViT-L-14-quickgelu`` and
``ViT-B-16-quickgelu`` hold OpenAI's CLIP; the names without ``-quickgelu``
silently use the wrong activation with those weights), parlab registers small
architectures for CPU work, stored as JSON like open_clip's model configs in
``parlab/models/clip_configs/``:

- ``parlab-clip-tiny``: a 4-layer ViT (patch 8, width 128) on 64x32 images and a
  4-layer text transformer of width 64 (the text tower dominates the cost of a
  step: 77 tokens per caption against 33 per image), 128-d embeddings; what
  parlab pretrains on SynthPA's captions when no real CLIP weights can be had.

Nothing is downloaded: ``weights`` must be a local file (an open_clip
checkpoint or ``.safetensors``), and a missing one is an error saying how to
get it. ``weights=None`` builds random weights, with a warning.
"""

from __future__ import annotations

import difflib
import functools
import logging
import warnings
from pathlib import Path

import torch.nn as nn

from parlab.errors import ConfigError, MissingFileError

CONFIG_DIR = Path(__file__).parent / "clip_configs"


@functools.cache
def _register_configs() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def clip_models() -> list[str]:
    """Every architecture name ``create_clip`` accepts (open_clip's and parlab's)."""
    import open_clip

    _register_configs()
    return open_clip.list_models()


def clip_tokenizer(name: str):
    """open_clip's tokenizer for architecture ``name`` (its vocabulary ships with open_clip: offline)."""
    import open_clip

    _register_configs()
    return open_clip.get_tokenizer(name)


def clip_transform(image_size: tuple[int, int], train: bool, pad: int = 10):
    """The PAR transform at (height, width) ``image_size`` with CLIP's input statistics, not ImageNet's."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from parlab.data.images import PARTransform

    return PARTransform(image_size, train=train, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, pad=pad)


def create_clip(name: str, weights: str | Path | None, device: str = "cpu",
                image_size: tuple[int, int] | int | None = None) -> nn.Module:
    """An open_clip CLIP model of architecture ``name`` with weights from the local file ``weights``.

    ``image_size`` overrides the architecture's input size (height, width); position embeddings of
    the weights are interpolated to the new patch grid when they are loaded.
    """
    import open_clip

    names = clip_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ConfigError(f"unknown CLIP architecture {name!r}" + (f"; close: {', '.join(close)}" if close else ""))
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size
    if weights is None or str(weights) == "":
        warnings.warn(f"{name}: random weights (no weights file given); fine for counting parameters and tests, "
                      "not for training", stacklevel=2)
        logging.disable(logging.WARNING)  # open_clip's own "no pretrained weights" line repeats the warning above
        try:
            return open_clip.create_model(name, pretrained=None, device=device, force_image_size=size)
        finally:
            logging.disable(logging.NOTSET)
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: CLIP weights file not found. parlab never downloads: fetch the file on a connected "
            f"machine (e.g. open_clip's {name} weights as open_clip_pytorch_model.bin or .safetensors from "
            "its Hugging Face page) and pass its path"
        )
    return open_clip.create_model(name, pretrained=str(path), device=device, force_image_size=size,
                                  weights_only=True)
