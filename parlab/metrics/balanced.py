"""The label-balanced test setting (Zhou et al., ICML 2024, after ImageNet-LT).

For each attribute j keep m_j = min(P_j, N_j) positives and m_j negatives of
the test split and ignore its other entries, so every attribute is scored on
a 50/50 set. Rows left with no kept entry are dropped.
"""

from __future__ import annotations

import numpy as np

from parlab.errors import ConfigError


def balanced_labels(
    gt: np.ndarray, selection: str = "first", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mask labels to the label-balanced setting.

    Args:
        gt: (N, A) labels in {-1, 0, 1}; -1 entries are never kept.
        selection: ``"first"`` keeps the first m_j of each label in row order
            (the reference code); ``"random"`` a seeded random choice.
        seed: seed for ``"random"``.
    Returns:
        (gt_masked (n, A) with dropped entries set to -1, rows (n,) kept row indices).
    """
    if selection not in ("first", "random"):
        raise ConfigError(f"selection must be 'first' or 'random', got {selection!r}")
    gt = np.asarray(gt)
    n, a = gt.shape
    if selection == "first":
        order = np.broadcast_to(np.arange(n)[:, None], (n, a))
    else:
        order = np.argsort(np.random.default_rng(seed).random((n, a)), axis=0, kind="stable")
    keep = np.zeros((n, a), dtype=bool)
    cols = np.arange(a)[None, :]
    ordered = gt[order, cols]  # (N, A) labels visited in selection order
    m = np.minimum((gt == 1).sum(0), (gt == 0).sum(0))  # (A,)
    for value in (0, 1):
        # rank of each entry among entries of the same label, in visiting order
        hit = ordered == value
        rank = np.cumsum(hit, axis=0)
        chosen = hit & (rank <= m[None, :])
        keep[order[chosen], np.broadcast_to(cols, (n, a))[chosen]] = True
    masked = np.where(keep, gt, -1)
    rows = np.flatnonzero(keep.any(1))
    return masked[rows], rows
