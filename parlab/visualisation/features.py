"""Feature maps of a layer and FRDL's attribute-specific features, for looking at what a model computes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from parlab.models import PARModel
from parlab.models.heads import AttributeFeatureHead


@torch.no_grad()
def strongest_channels(model: nn.Module, image: torch.Tensor, layer: nn.Module, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` channels of ``layer``'s output with the largest mean activation on one image.

    Args:
        image: (1, 3, H, W) as the model's evaluation transform makes it.
        layer: a module whose output is (1, C, h, w) (a CNN stage).

    Returns:
        (maps (k, h, w), channel indices (k,)), strongest first.
    """
    captured = {}

    def keep_output(_module, _args, output) -> None:
        captured["y"] = output

    model.eval()
    hook = layer.register_forward_hook(keep_output)
    try:
        model(image)
    finally:
        hook.remove()
    out = captured["y"]
    if out.ndim != 4:
        raise ValueError(f"layer output has shape {tuple(out.shape)}; expected (1, C, h, w) feature maps")
    strength = out[0].mean(dim=(1, 2))
    top = strength.topk(min(k, len(strength))).indices
    return out[0, top].float().numpy(), top.numpy()


@torch.no_grad()
def attribute_features(model: PARModel, images: torch.Tensor, attribute: int) -> np.ndarray:
    """FRDL's attribute-specific features ReLU(f_j) of one attribute: (B, C), what its classifier reads."""
    if not isinstance(model.head, AttributeFeatureHead):
        raise ValueError("attribute-specific features need FRDL's attribute head (head='attribute')")
    model.eval()
    f = model.head.features(model.backbone(images))  # (B, A, C)
    return torch.relu(f[:, attribute]).float().numpy()


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 2), mean (C,), components (2, C)) of a 2-D PCA, so directions can be projected too."""
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = vt[:2]
    return (features - mean) @ components.T, mean, components
