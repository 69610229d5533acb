"""Label statistics behind the imbalance study (notebook 02).

Pure functions of a (N, A) label matrix with 1 positive, 0 negative and -1
ignored. :func:`balancing_weights` makes the FRDL paper's argument concrete:
no weighting of whole images can make every attribute 50/50 when attributes
co-occur or exclude each other (three exclusive age bins cannot all be 1/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linprog


def positive_ratio(labels: np.ndarray) -> np.ndarray:
    """(A,) positives / non-ignored entries per attribute (NaN if none)."""
    known = (labels >= 0).sum(0)
    return np.divide((labels == 1).sum(0), known, out=np.full(labels.shape[1], np.nan), where=known > 0)


def imbalance_ratio(labels: np.ndarray) -> np.ndarray:
    """(A,) majority count / minority count (inf when a class is absent)."""
    pos, neg = (labels == 1).sum(0), (labels == 0).sum(0)
    hi, lo = np.maximum(pos, neg).astype(float), np.minimum(pos, neg).astype(float)
    return np.divide(hi, lo, out=np.full(len(hi), np.inf), where=lo > 0)


def label_cardinality(labels: np.ndarray) -> np.ndarray:
    """(N,) number of positive attributes per image."""
    return (labels == 1).sum(1)


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """(A, A) count of images positive for both j and k (diagonal: positives of j)."""
    y = (labels == 1).astype(np.float64)
    return y.T @ y


def conditional(labels: np.ndarray) -> np.ndarray:
    """(A, A) P(k | j): row j, column k = P(y_k = 1 | y_j = 1)."""
    c = cooccurrence(labels)
    d = np.diag(c)[:, None]
    return np.divide(c, d, out=np.full_like(c, np.nan), where=d > 0)


def phi(labels: np.ndarray) -> np.ndarray:
    """(A, A) phi coefficients (Pearson correlation of binary labels; ignored entries as 0)."""
    y = (labels == 1).astype(np.float64)
    y = y - y.mean(0)
    sd = np.sqrt((y**2).sum(0))
    denom = np.outer(sd, sd)
    return np.divide(y.T @ y, denom, out=np.full((y.shape[1],) * 2, np.nan), where=denom > 0)


def phi_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Pearson correlation of the A(A-1)/2 pairwise phi coefficients of two label sets."""
    iu = np.triu_indices(labels_a.shape[1], 1)
    pa, pb = phi(labels_a)[iu], phi(labels_b)[iu]
    ok = np.isfinite(pa) & np.isfinite(pb)
    return float(np.corrcoef(pa[ok], pb[ok])[0, 1])


def summary_table(labels: np.ndarray, attributes: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Per-attribute positives, negatives, ratio and imbalance ratio."""
    return pd.DataFrame(
        {
            "positives": (labels == 1).sum(0),
            "negatives": (labels == 0).sum(0),
            "positive_ratio": positive_ratio(labels),
            "imbalance_ratio": imbalance_ratio(labels),
        },
        index=pd.Index(list(attributes), name="attribute"),
    )


def prior_shift(train: np.ndarray, test: np.ndarray, attributes: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Train vs test positive ratios and their difference (points)."""
    tr, te = positive_ratio(train), positive_ratio(test)
    return pd.DataFrame(
        {"train": tr, "test": te, "shift_points": 100 * (te - tr)}, index=pd.Index(list(attributes), name="attribute")
    )


@dataclass(frozen=True)
class BalancingResult:
    """Best image weighting towards 50/50 priors."""

    feasible: bool  # could every attribute reach exactly 0.5
    max_deviation: float  # min over weightings of max_j |prior_j - 0.5|
    priors: np.ndarray  # (A,) attribute priors under the best weights
    weights: np.ndarray  # (N,) image weights, summing to 1
    num_patterns: int  # distinct label vectors the LP ran over


def balancing_weights(labels: np.ndarray, target: float = 0.5) -> BalancingResult:
    """Image weights that bring every attribute's prior closest to ``target``.

    Solves ``min_w max_j |sum_i w_i y_ij - target|`` with ``w >= 0``,
    ``sum w = 1`` as a linear program. Images with the same label vector are
    interchangeable, so the LP runs over distinct label vectors (thousands,
    not tens of thousands) and the weight of a vector is shared by its images.
    """
    y = (labels == 1).astype(np.int8)
    patterns, inverse, counts = np.unique(y, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    p, a = patterns.shape
    # variables: pattern weights v (p), deviation t; minimise t
    c = np.zeros(p + 1)
    c[-1] = 1.0
    ones = np.ones((a, 1))
    a_ub = np.vstack([np.hstack([patterns.T, -ones]), np.hstack([-patterns.T, -ones])])
    b_ub = np.concatenate([np.full(a, target), np.full(a, -target)])
    a_eq = np.hstack([np.ones((1, p)), np.zeros((1, 1))])
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=[(0, None)] * (p + 1), method="highs")
    if not res.success:
        raise RuntimeError(f"linprog failed: {res.message}")
    v = res.x[:p]
    weights = v[inverse] / counts[inverse]
    deviation = float(res.x[-1])
    return BalancingResult(
        feasible=deviation < 1e-9,
        max_deviation=deviation,
        priors=patterns.T @ v,
        weights=weights,
        num_patterns=p,
    )
