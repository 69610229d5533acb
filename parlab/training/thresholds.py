"""Per-attribute decision thresholds tuned on validation.

The PAR standard thresholds every probability at 0.5. A model trained on an
imbalanced split is often better served by one threshold per attribute; this
picks, per attribute, the grid threshold with the highest balanced accuracy
(TPR + TNR) / 2 on validation, the per-attribute term of mA. Results are always
reported beside the fixed threshold, never instead of it.
"""

from __future__ import annotations

import numpy as np

DEFAULT_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)


def tune_thresholds(gt: np.ndarray, probs: np.ndarray, grid: np.ndarray = DEFAULT_GRID,
                    default: float = 0.5) -> np.ndarray:
    """(A,) thresholds maximising per-attribute balanced accuracy.

    Args:
        gt: (N, A) labels in {-1, 0, 1}; -1 entries are ignored.
        probs: (N, A) probabilities.
        grid: (T,) candidate thresholds; ties go to the one closest to ``default``.
        default: threshold kept for attributes with no positives or no negatives.
    """
    gt = np.asarray(gt)
    pos = (gt == 1)
    neg = (gt == 0)
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    out = np.full(gt.shape[1], default, dtype=np.float64)
    # Try thresholds in order of distance from the default, so argmax picks the closest among ties.
    grid = np.asarray(grid, dtype=np.float64)
    grid = grid[np.argsort(np.abs(grid - default), kind="stable")]
    tpr = np.empty((len(grid), gt.shape[1]))
    tnr = np.empty_like(tpr)
    for k, t in enumerate(grid):  # T passes over (N, A): memory stays O(N*A)
        pred = probs > t
        tpr[k] = (pred & pos).sum(0) / np.maximum(n_pos, 1)
        tnr[k] = (~pred & neg).sum(0) / np.maximum(n_neg, 1)
    best = np.argmax(tpr + tnr, axis=0)
    valid = (n_pos > 0) & (n_neg > 0)
    out[valid] = grid[best[valid]]
    return out
