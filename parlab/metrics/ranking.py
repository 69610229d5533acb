"""How well scores rank the images of each attribute, whatever the threshold: the diagnostic that tells a
worse operating point from a worse model.

Two models can differ in mA because one decides at a worse threshold or because its scores order the
images worse. The area under the ROC curve (AUC) and the mA at each attribute's best threshold on the
evaluated split itself (an oracle, never a result to report as a method's score) depend on the order alone.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _valid(gt: np.ndarray, scores: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    keep = gt[:, j] >= 0
    y, s = gt[keep, j], scores[keep, j]
    return y, s, int((y == 1).sum()), int((y == 0).sum())


def attribute_auc(gt: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per attribute, the probability that a positive image scores above a negative one (ties count half).

    Args:
        gt: (N, A) labels, 1 / 0, -1 ignored.
        scores: (N, A) probabilities or logits (any increasing function of them gives the same AUC).
    Returns:
        (A,) AUC in [0, 1]; NaN for an attribute without both labels.
    """
    out = np.full(gt.shape[1], np.nan)
    for j in range(gt.shape[1]):
        y, s, positives, negatives = _valid(gt, scores, j)
        if positives and negatives:
            # Mann-Whitney U from the ranks of the positives, ties at their average rank.
            ranks = rankdata(s)
            out[j] = (ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return out


def best_threshold_ma(gt: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per attribute, the mean of TPR and TNR at the threshold that maximises it on these very labels (an
    oracle: the ceiling any threshold could reach on this split).

    Args:
        gt: (N, A) labels, 1 / 0, -1 ignored.
        scores: (N, A); an image is positive when its score exceeds the threshold.
    Returns:
        (A,) in [0.5, 1]; NaN for an attribute without both labels.
    """
    out = np.full(gt.shape[1], np.nan)
    for j in range(gt.shape[1]):
        y, s, positives, negatives = _valid(gt, scores, j)
        if not (positives and negatives):
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted, y_sorted = s[order], y[order]
        tp, fp = np.cumsum(y_sorted == 1), np.cumsum(y_sorted == 0)
        # A threshold can only fall between distinct scores: the last index of each run of equal scores.
        cut = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        balanced = (tp[cut] / positives + 1 - fp[cut] / negatives) / 2
        out[j] = max(float(balanced.max()), 0.5)  # 0.5: everything negative (or everything positive)
    return out
