"""Backbone + head: the PAR classifier every method trains."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from parlab.errors import ConfigError
from parlab.models.backbones import create_backbone
from parlab.models.heads import HEADS


class PARModel(nn.Module):
    """images (B, 3, H, W) -> logits (B, A)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled features g (B, C)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(
    backbone: str,
    num_attributes: int,
    head: str = "linear",
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> PARModel:
    """Build a :class:`PARModel`; ``weights`` is a local backbone weights file (never downloaded).

    ``image_size`` (height, width) matters only for fixed-grid architectures (ViT, Swin).
    """
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    net = create_backbone(backbone, weights=weights, drop_rate=drop_rate, image_size=image_size)
    return PARModel(net, HEADS[head](net.num_features, num_attributes))
