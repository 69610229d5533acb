"""A convolutional patch embedding for open_clip ViTs (a hybrid ViT) that learn on a small budget.

A plain ViT cuts the image into patches with one strided convolution; trained
from scratch on tens of thousands of images it learns slowly. A few stride-2
3x3 convolutions in its place (Xiao et al., 2021, "Early convolutions help
transformers see better") give the same patch grid with a local inductive
bias. The tower stays an open_clip ``VisionTransformer`` with its class
token, position embeddings and blocks (what PromptPAR needs): only
``visual.conv1`` is replaced, so state dicts name the stem
``visual.conv1.<i>.*``.

Which architectures have a stem is declared in ``clip_configs/stems.json``
(open_clip reads only files with a model config, so it skips that one):
``{"name": {"channels": [c1, ...]}}``; a stem of ``len(channels) + 1``
convolutions makes a patch of ``2 ** (len(channels) + 1)`` pixels.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch.nn as nn

STEMS_FILE = Path(__file__).parent / "clip_configs" / "stems.json"


@functools.cache
def stem_specs() -> dict[str, dict]:
    """Architecture name -> stem spec, from ``clip_configs/stems.json``."""
    return json.loads(STEMS_FILE.read_text(encoding="utf-8"))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, per position: independent of the batch, so a
    frozen CLIP stays frozen in training mode (BatchNorm would update its statistics)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_stem(width: int, patch: int, channels: list[int]) -> nn.Sequential:
    """(B, 3, H, W) -> (B, width, H / patch, W / patch): stride-2 3x3 convolutions with norm and GELU, then a
    last stride-2 convolution to ``width`` (no norm: the ViT's ``ln_pre`` follows)."""
    if 2 ** (len(channels) + 1) != patch:
        raise ValueError(f"a stem of {len(channels) + 1} stride-2 convolutions makes {2 ** (len(channels) + 1)}-"
                         f"pixel patches, not {patch}")
    layers, previous = [], 3
    for c in channels:
        layers += [nn.Conv2d(previous, c, 3, 2, 1, bias=False), ChannelNorm(c), nn.GELU()]
        previous = c
    layers.append(nn.Conv2d(previous, width, 3, 2, 1))
    return nn.Sequential(*layers)


def install_stem(model: nn.Module, name: str) -> None:
    """Replace ``model.visual.conv1`` by the stem declared for architecture ``name`` (if any), in place."""
    spec = stem_specs().get(name)
    if spec is None:
        return
    visual = model.visual
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    device = visual.conv1.weight.device
    visual.conv1 = conv_stem(visual.conv1.out_channels, int(patch), list(spec["channels"])).to(device)
