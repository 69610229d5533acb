"""Multi-label BCE losses of the PAR baseline.

All are BCE with logits summed over attributes and averaged over the batch
(Rethinking_of_PAR); entries labelled -1 (ignored) contribute nothing. The
per-element weights depend on the training positive ratio r_j:

- ``weighted`` (Li et al., reference code): exp(1 - r_j) for positives,
  exp(r_j) for negatives;
- ``sqrt`` (Tan et al., AAAI 2020): sqrt(1 / (2 r_j)) for positives,
  sqrt(1 / (2 (1 - r_j))) for negatives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from parlab.errors import ConfigError

# Attributes with no positives (or no negatives) in train would get an infinite
# sqrt weight; clamping r keeps the weight finite and large.
_RATIO_EPS = 1e-4


def ratio_weights(targets: torch.Tensor, ratio: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-element weights (B, A) for ``targets`` (B, A) in {0, 1} (-1 allowed) and ``ratio`` (A,)."""
    r = ratio.to(targets).clamp(_RATIO_EPS, 1 - _RATIO_EPS)
    pos = targets == 1
    if scheme == "weighted":
        return torch.where(pos, torch.exp(1 - r), torch.exp(r))
    if scheme == "sqrt":
        return torch.where(pos, torch.sqrt(0.5 / r), torch.sqrt(0.5 / (1 - r)))
    raise ConfigError(f"unknown weighting {scheme!r}; known: weighted, sqrt")


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE summed over attributes, averaged over the batch.

    Args:
        logits: (B, A).
        targets: (B, A) with 1 positive, 0 negative, -1 ignored.
        weights: optional (B, A) per-element weights.
    """
    keep = (targets >= 0).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), reduction="none")
    per = per * keep if weights is None else per * keep * weights
    return per.sum(dim=1).mean()


class PARLoss(torch.nn.Module):
    """The configured loss: ``PARLoss("weighted", train_ratio)(logits, targets)``."""

    def __init__(self, kind: str, train_ratio: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        if kind not in ("bce", "weighted", "sqrt"):
            raise ConfigError(f"unknown loss {kind!r}; known: bce, weighted, sqrt")
        if kind != "bce" and train_ratio is None:
            raise ConfigError(f"loss {kind!r} needs the training positive ratios")
        self.kind = kind
        ratio = torch.as_tensor(np.zeros(0) if train_ratio is None else train_ratio, dtype=torch.float32)
        self.register_buffer("ratio", ratio, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the loss in full precision under autocast
        weights = None if self.kind == "bce" else ratio_weights(targets, self.ratio, self.kind)
        return multilabel_bce(logits, targets, weights)
