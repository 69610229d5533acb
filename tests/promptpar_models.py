"""The tiny PromptPAR configuration the PromptPAR tests build on (parlab-clip-tiny, 5 attributes, random weights)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from parlab.methods.promptpar import PromptPARConfig, build_model

A = 5
TINY = PromptPARConfig(clip_model="parlab-clip-tiny", num_attributes=A, image_size=(64, 32), vis_prompt=10,
                       vis_depth=4, div_num=4, overlap_row=2, text_prompt=2,
                       attribute_sentences=tuple(f"A pedestrian wearing thing {i}" for i in range(A)))


def tiny(**changes) -> torch.nn.Module:
    """TINY with ``changes``, built from seed 0 (the warning about random CLIP weights silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random")
        torch.manual_seed(0)
        return build_model(replace(TINY, **changes))
