"""Parameter counts, for the trainable-parameter tables of prompt tuning and fine-tuning."""

from __future__ import annotations

import torch.nn as nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements; shared parameters are counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)
