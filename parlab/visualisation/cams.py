"""Class activation maps per attribute, for every model parlab trains (the ``grad-cam`` package).

PAR is multi-label: a CAM answers "where does the model look for attribute j
in image i", so every image gets its own target for each attribute asked for.
The package pairs targets with images by ``zip`` and silently leaves an image
without a target blank, so :func:`attribute_cams` always builds exactly one
target per image.

Where the maps come from:

- CNN backbones (timm): the deepest stage whose map is at least
  :data:`MIN_GRID` (8x4) at the input size: at parlab's default 64x32 a
  stride-32 last stage is a 2x1 map, a band whatever the attribute, so the
  stride-8 stage is read there; at 256x192 the last stage (8x6) is;
- ViT backbones (timm): the last block's input LayerNorm (the tokens the
  class token reads), prefix tokens dropped, laid out on the actual patch grid
  (non-square grids included);
- Swin backbones (timm): chosen the same way, channels-last maps turned channels-first;
- PromptPAR: the CLIP visual tower's last block (every output token feeds the
  fusion block), keeping only the patch tokens (CLS, prompts and part tokens
  dropped) on the tower's grid.

FRDL's models are ordinary :class:`~parlab.models.PARModel` with per-attribute
heads, so their CAMs go through the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from parlab.errors import ConfigError
from parlab.methods.promptpar.model import PromptPAR
from parlab.models import PARModel
from parlab.models.clip import CLIPImageTower


def cam_methods() -> dict[str, type]:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "eigencam": EigenCAM,
            "layercam": LayerCAM}


def cam_method(name: str) -> type:
    """The pytorch-grad-cam class :func:`cam_methods` names ``name``; an unknown name is a ConfigError listing them."""
    methods = cam_methods()
    if name not in methods:
        raise ConfigError(f"unknown CAM method {name!r}; known: {', '.join(methods)}")
    return methods[name]


@dataclass(frozen=True)
class CAMLayer:
    """The layer a CAM reads and how its output becomes (B, C, rows, cols) maps."""

    layer: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    description: str


def _tokens_to_maps(start: int, grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    rows, cols = grid

    def reshape(tokens: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, C, rows, cols)
        patches = tokens[:, start:start + rows * cols]
        return patches.reshape(len(tokens), rows, cols, -1).permute(0, 3, 1, 2)

    return reshape


MIN_GRID = (8, 4)  # (rows, cols): the coarsest CAM that can still show where on a person something is


def cam_layer(model: nn.Module, image_size: tuple[int, int] | None = None) -> CAMLayer:
    """The layer a CAM of ``model`` reads at input ``image_size`` (height, width; see the module docstring).

    Without ``image_size`` a CNN's last stage is read.
    """
    if isinstance(model, PromptPAR):
        layout = model.layout
        return CAMLayer(model.clip.visual.transformer.resblocks[-1], _tokens_to_maps(layout.patches.start, layout.grid),
                        f"CLIP visual block {len(model.clip.visual.transformer.resblocks) - 1}, "
                        f"{layout.grid[0]}x{layout.grid[1]} patches")
    if not isinstance(model, PARModel):
        raise TypeError(f"no CAM layer known for {type(model).__name__}; use a PARModel or PromptPAR")
    backbone = model.backbone
    if isinstance(backbone, CLIPImageTower):  # its class token is pooled: read the last block's input, as for ViTs
        blocks = backbone.visual.transformer.resblocks
        grid = tuple(backbone.visual.grid_size)
        return CAMLayer(blocks[-1].ln_1, _tokens_to_maps(1, grid),
                        f"CLIP visual block {len(blocks) - 1} (ln_1), {grid[0]}x{grid[1]} patches")
    if hasattr(backbone, "patch_embed") and hasattr(backbone, "blocks"):  # ViT family
        grid = tuple(backbone.patch_embed.grid_size)
        prefix = getattr(backbone, "num_prefix_tokens", 1)
        # The last block's first LayerNorm: the patch tokens the class token reads from. The block's
        # output patch tokens feed nothing when the class token is pooled, so their gradient is zero.
        return CAMLayer(backbone.blocks[-1].norm1, _tokens_to_maps(prefix, grid),
                        f"block {len(backbone.blocks) - 1} (norm1), {grid[0]}x{grid[1]} patches")
    stage = _stage(backbone.feature_info, image_size)
    name = stage["module"]
    layer = backbone.get_submodule(name)
    size = "" if image_size is None else \
        f", {image_size[0] // stage['reduction']}x{image_size[1] // stage['reduction']} map"
    if hasattr(backbone, "layers") and "layers" in name:  # Swin stages return (B, H, W, C)
        return CAMLayer(layer, lambda x: x.permute(0, 3, 1, 2), f"stage {name} (channels last){size}")
    return CAMLayer(layer, None, f"stage {name}{size}")


def _stage(feature_info, image_size: tuple[int, int] | None) -> dict:
    """The deepest stage whose map is at least :data:`MIN_GRID` at ``image_size`` (else the first stage)."""
    stages = list(feature_info)
    if image_size is None:
        return stages[-1]
    fits = [s for s in stages if image_size[0] // s["reduction"] >= MIN_GRID[0]
            and image_size[1] // s["reduction"] >= MIN_GRID[1]]
    return fits[-1] if fits else stages[0]


def attribute_cams(model: nn.Module, images: torch.Tensor, attributes: list[int], method: str = "gradcam",
                   layer: CAMLayer | None = None) -> np.ndarray:
    """CAMs of ``attributes`` for every image: (B, len(attributes), H, W) in [0, 1].

    Args:
        model: a PARModel (baseline, FRDL) or PromptPAR, in eval mode.
        images: (B, 3, H, W) as the model's evaluation transform makes them.
        attributes: attribute indices; each image gets one target per attribute.
        method: one of :func:`cam_methods` (``eigencam`` ignores the attribute: it is the first
            principal component of the layer's maps).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = cam_method(method)
    model.eval()  # also makes PromptPAR return its main logits only
    layer = layer or cam_layer(model, tuple(images.shape[-2:]))
    maps = []
    with cam_class(model=model, target_layers=[layer.layer], reshape_transform=layer.reshape) as cam:
        for a in attributes:
            targets = [ClassifierOutputTarget(int(a)) for _ in range(len(images))]
            maps.append(cam(input_tensor=images, targets=targets))  # (B, H, W)
    out = np.stack(maps, axis=1).astype(np.float32)
    if out.shape[0] != len(images):
        raise RuntimeError(f"{method}: {out.shape[0]} maps for {len(images)} images")
    return out
