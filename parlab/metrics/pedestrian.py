"""Pedestrian attribute metrics (Li et al., 2016; Jia et al., "Rethinking of PAR", 2021).

Label-based: per attribute TPR and TNR over its non-ignored entries,
``mA = mean_j (TPR_j + TNR_j) / 2``. Instance-based: per image
``Acc = |Y∩Ŷ| / |Y∪Ŷ|``, ``Prec = |Y∩Ŷ| / |Ŷ|``, ``Rec = |Y∩Ŷ| / |Y|`` (an
empty denominator scores 0, as in the reference), averaged over images;
``F1 = 2·Prec·Rec / (Prec + Rec)`` of those means (Rethinking_of_PAR, FRDL),
and ``instance_f1``, the mean of per-image F1 (PromptPAR's definition).

An attribute with no positives or no negatives in the evaluated set has no
TPR or TNR: it is reported as NaN and left out of mA (``num_degenerate`` says
how many). ``parity=True`` reproduces the reference code, which divides by
``count + 1e-20`` and so scores such an attribute at most 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from parlab.metrics.balanced import balanced_labels

_EPS = 1e-20  # the reference code's guard


@dataclass(frozen=True)
class PARMetrics:
    """Scores of one evaluation (fractions in [0, 1])."""

    ma: float
    acc: float
    prec: float
    rec: float
    f1: float
    instance_f1: float
    num_images: int
    num_degenerate: int
    per_attribute: pd.DataFrame = field(repr=False)
    threshold: float | tuple[float, ...] = 0.5
    setting: str = "standard"

    def summary(self) -> dict[str, float]:
        """The five standard numbers plus the per-image F1, in percent."""
        return {k: 100 * getattr(self, k) for k in ("ma", "acc", "prec", "rec", "f1", "instance_f1")}


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


@dataclass(frozen=True)
class _Counts:
    """Per-attribute (A,) counts over the non-ignored entries, as float64."""

    pos: np.ndarray
    neg: np.ndarray
    tp: np.ndarray
    tn: np.ndarray
    fp: np.ndarray


def _checked_inputs(
    gt: np.ndarray,
    probs: np.ndarray,
    threshold: float | np.ndarray,
    attributes: list[str] | tuple[str, ...] | None,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Validate the inputs; returns (gt, float64 probs, A names, (A,) thresholds)."""
    gt = np.asarray(gt)
    probs = np.asarray(probs, dtype=np.float64)
    if gt.shape != probs.shape or gt.ndim != 2:
        raise ValueError(f"gt and probs must both be (N, A); got {gt.shape} and {probs.shape}")
    bad = ~np.isin(gt, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"gt holds values outside {{-1, 0, 1}}, e.g. {gt[bad][0]!r}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs holds NaN or infinite values")
    a = gt.shape[1]
    names = list(attributes) if attributes is not None else [f"attr{j}" for j in range(a)]
    if len(names) != a:
        raise ValueError(f"{len(names)} attribute names for {a} columns")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (a,))
    return gt, probs, names, thr


def _attribute_counts(y: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> _Counts:
    """Counts per column of (N, A) boolean labels, predictions and validity."""
    return _Counts(
        pos=(y & valid).sum(0).astype(np.float64),
        neg=(~y & valid).sum(0).astype(np.float64),
        tp=(pred & y).sum(0).astype(np.float64),
        tn=(~pred & ~y & valid).sum(0).astype(np.float64),
        fp=(pred & ~y).sum(0).astype(np.float64),
    )


def _label_scores(c: _Counts, parity: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-attribute (TPR, TNR, mA) and their mean mA."""
    if parity:
        tpr, tnr = c.tp / (c.pos + _EPS), c.tn / (c.neg + _EPS)
        label_ma = (tpr + tnr) / 2
        return tpr, tnr, label_ma, float(label_ma.mean()) if len(label_ma) else float("nan")
    tpr = np.where(c.pos > 0, _safe_div(c.tp, c.pos), np.nan)
    tnr = np.where(c.neg > 0, _safe_div(c.tn, c.neg), np.nan)
    label_ma = (tpr + tnr) / 2
    # all-NaN would make nanmean warn; no scorable attribute means no mA
    scorable = ((c.pos > 0) & (c.neg > 0)).any()
    return tpr, tnr, label_ma, float(np.nanmean(label_ma)) if scorable else float("nan")


def _instance_scores(y: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> tuple[float, float, float, float, float]:
    """(Acc, Prec, Rec, F1 of the means, mean per-image F1) over the rows; NaN for no rows."""
    inter = (pred & y).sum(1).astype(np.float64)
    n_gt = (y & valid).sum(1).astype(np.float64)
    n_pred = pred.sum(1).astype(np.float64)
    union = n_gt + n_pred - inter
    acc_i, prec_i, rec_i = _safe_div(inter, union), _safe_div(inter, n_pred), _safe_div(inter, n_gt)
    f1_i = _safe_div(2 * prec_i * rec_i, prec_i + rec_i)
    n = len(y)
    acc, prec, rec = (float(v.mean()) if n else float("nan") for v in (acc_i, prec_i, rec_i))
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return acc, prec, rec, f1, float(f1_i.mean()) if n else float("nan")


def _attribute_table(
    names: list[str], c: _Counts, tpr: np.ndarray, tnr: np.ndarray, label_ma: np.ndarray, thr: np.ndarray
) -> pd.DataFrame:
    """The per-attribute table, indexed by attribute name."""
    prec_j = _safe_div(c.tp, c.tp + c.fp)
    rec_j = _safe_div(c.tp, c.pos)
    return pd.DataFrame(
        {
            "attribute": names,
            "positives": c.pos.astype(int),
            "negatives": c.neg.astype(int),
            "positive_ratio": _safe_div(c.pos, c.pos + c.neg),
            "tpr": tpr,
            "tnr": tnr,
            "ma": label_ma,
            "precision": prec_j,
            "recall": rec_j,
            "f1": _safe_div(2 * prec_j * rec_j, prec_j + rec_j),
            "threshold": thr,
        }
    ).set_index("attribute")


def pedestrian_metrics(
    gt: np.ndarray,
    probs: np.ndarray,
    threshold: float | np.ndarray = 0.5,
    parity: bool = False,
    attributes: list[str] | tuple[str, ...] | None = None,
    balanced: bool = False,
    selection: str = "first",
    seed: int = 0,
) -> PARMetrics:
    """Score probabilities against PAR labels.

    Args:
        gt: (N, A) labels; 1 positive, 0 negative, -1 ignored.
        probs: (N, A) probabilities (or any score thresholded at ``threshold``).
        threshold: scalar or (A,) per-attribute thresholds; prediction is ``probs > threshold``.
        parity: score degenerate attributes as the reference code does.
        attributes: (A,) names for the per-attribute table.
        balanced: use the label-balanced test setting (see :mod:`.balanced`).
        selection, seed: how the balanced setting picks its entries.
    """
    gt, probs, names, thr = _checked_inputs(gt, probs, threshold, attributes)
    if balanced:
        gt, rows = balanced_labels(gt, selection, seed)
        probs = probs[rows]
    valid = gt >= 0
    y = gt == 1
    pred = (probs > thr) & valid
    counts = _attribute_counts(y, pred, valid)
    tpr, tnr, label_ma, ma = _label_scores(counts, parity)
    acc, prec, rec, f1, instance_f1 = _instance_scores(y, pred, valid)
    degenerate = (counts.pos == 0) | (counts.neg == 0)
    return PARMetrics(
        ma=ma, acc=acc, prec=prec, rec=rec, f1=f1, instance_f1=instance_f1,
        num_images=len(gt), num_degenerate=int(degenerate.sum()),
        per_attribute=_attribute_table(names, counts, tpr, tnr, label_ma, thr),
        threshold=float(thr[0]) if np.ndim(threshold) == 0 else tuple(thr.tolist()),
        setting=f"balanced ({selection})" if balanced else "standard",
    )
