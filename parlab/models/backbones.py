"""timm backbones by name, with pretrained weights only from a local file.

parlab never downloads: ``weights`` names a file the user already has (a timm
``model.safetensors`` / ``pytorch_model.bin`` / ``.pth`` / ``.npz`` for that
architecture). timm loads it through ``pretrained_cfg_overlay=dict(file=...)``,
which applies the architecture's own checkpoint filter (position-embedding
resizing for ViTs at 256x192, for instance) and reads ``.pth`` files with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path

import timm
import torch.nn as nn

from parlab.errors import ParlabError


class BackboneError(ParlabError, ValueError):
    """An unknown backbone name or an unusable weights file."""


def available_backbones(pattern: str = "*") -> list[str]:
    """Architecture names timm can build (``pattern`` is a glob, e.g. ``"convnext_*"``)."""
    return timm.list_models(pattern)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "see parlab.models.available_backbones()"
    raise BackboneError(f"unknown backbone {name!r}; {hint}")


class _KeyReport(logging.Handler):
    """Collects timm's 'Missing keys' / 'Unexpected keys' messages while pretrained weights load.

    timm loads non-strictly once the classifier is removed (num_classes=0) and only logs key
    mismatches, so weights of another architecture would silently leave the model random.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys")):
            self.problems.append(message.split(")")[0][:300] + ")")


@contextlib.contextmanager
def _watch_timm_loading():
    logger = logging.getLogger("timm.models._builder")
    report, level = _KeyReport(), logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)


def create_backbone(name: str, weights: str | Path | None = None, drop_rate: float = 0.0,
                    image_size: tuple[int, int] | None = None) -> nn.Module:
    """A timm model without classifier: ``forward(x)`` gives pooled features (B, C).

    Args:
        name: a timm architecture name (``resnet50``, ``convnext_base``, ``vit_base_patch16_224``...).
        weights: local pretrained weights file, or None/"" for random initialisation.
        drop_rate: dropout before the (removed) classifier.
        image_size: (height, width) of the inputs; passed to architectures with a fixed input grid
            (ViT, Swin...), whose position embeddings timm then resizes from the pretrained ones.

    The returned module has ``num_features`` (C).
    """
    _check_name(name)
    kwargs: dict = {"num_classes": 0, "drop_rate": drop_rate}
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"pretrained weights for {name!r} not found: {path}. parlab never downloads; "
                f"put the timm weights file of {name} (model.safetensors or pytorch_model.bin from its "
                "Hugging Face page, fetched on a connected machine) at that path, or pass weights='' "
                "to train from scratch"
            )
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    try:
        with _watch_timm_loading() as report:
            model = _create(name, image_size, kwargs)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        if not weights:
            raise
        raise BackboneError(f"{weights}: cannot load as weights of {name!r}: {exc}") from None
    if weights and report.problems:
        raise BackboneError(f"{weights}: cannot load as weights of {name!r}: " + "; ".join(report.problems))
    return model


def _create(name: str, image_size: tuple[int, int] | None, kwargs: dict) -> nn.Module:
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=tuple(image_size), **kwargs)
        except TypeError as exc:
            # Convolutional nets take any input size and have no img_size argument.
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)
