"""The statistics behind comparisons of methods: mA under image weights, bootstrap resamples, t intervals.

Pure functions on NumPy arrays, used by :func:`parlab.results.differences` and
:func:`parlab.results.component_sentences`:

- a difference over the same seeds on both sides gets the paired t interval of the
  seed-matched differences (:func:`paired_interval`);
- a difference over other seeds gets Welch's t interval (unequal variances, Welch 1947,
  "The generalization of 'Student's' problem when several different population
  variances are involved"), computed by :func:`scipy.stats.ttest_ind`;
- a difference where a side is a single run gets a hierarchical bootstrap (Davison &
  Hinkley 1997, "Bootstrap Methods and their Application", section 3.8): runs
  resampled within each side, then test images, shared by both sides
  (:func:`hierarchical_interval`); with a single run on both sides it is the
  paired bootstrap over test images (Efron & Tibshirani 1993, "An Introduction to
  the Bootstrap"): a resample is a row of image counts, so every method is scored
  on the same resamples by :func:`weighted_ma`;
- one run held against the mean of n seeds gets the t prediction interval.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats


def weighted_ma(decisions: list[np.ndarray], gt: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mA of each run with the test images weighted (a bootstrap resample is a row of counts).

    Args:
        decisions: R arrays (N, A) of 0/1 decisions on the same N images.
        gt: (N, A) labels; 1 positive, 0 negative, -1 ignored.
        weights: (D, N) image weights, one row per evaluation.
    Returns:
        (D, R) mA in [0, 1]; an attribute without weighted positives or negatives is left out, as in
        :func:`~parlab.metrics.pedestrian_metrics`.
    """
    pos, neg = (gt == 1).astype(np.float64), (gt == 0).astype(np.float64)
    positives, negatives = weights @ pos, weights @ neg  # (D, A)
    out = np.empty((len(weights), len(decisions)))
    with np.errstate(invalid="ignore", divide="ignore"):
        for r, d in enumerate(decisions):
            tpr = (weights @ (pos * d)) / positives
            tnr = (weights @ (neg * (1 - d))) / negatives
            out[:, r] = np.nanmean((tpr + tnr) / 2, axis=1)
    return out


def bootstrap_weights(n: int, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """(draws, n) counts of each of n images in ``draws`` seeded bootstrap resamples (each row sums to n)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def welch_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) over independent repeats (Welch's t), as (low, high).

    Args:
        a: (n_a,) one value per run (e.g. per seed) of one method.
        b: (n_b,) the same of the other method.
    Returns:
        The interval itself (not offsets from the difference). With fewer than two runs on a side the
        spread is unknown: (nan, nan). When neither side varies: the difference alone, (d, d).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:  # no spread: scipy's t statistic would be 0/0
        return diff, diff
    with warnings.catch_warnings():
        # One side without spread (every seed scored the same) is a valid case, not a loss of precision.
        warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def paired_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% interval of mean(a - b) over n >= 2 matched repeats (paired t, n - 1 degrees of freedom).

    Args:
        a: (n,) one value per seed of one method.
        b: (n,) the other method's, seed for seed.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.975, len(d) - 1)) * sd / np.sqrt(len(d))
    return mean - half, mean + half


def hierarchical_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(a) - mean(b) resampling runs, then images (hierarchical bootstrap).

    Args:
        a: (D, R_a) one method's score of each of R_a runs on each of D image resamples (:func:`weighted_ma`).
        b: (D, R_b) the other's on the same D resamples.
    Each draw takes R_a of a's runs and R_b of b's with replacement and scores them on that draw's images, so
    the interval holds both the spread between runs and the sampling of the test images; a side of one
    run adds only the latter.
    """
    rng = np.random.default_rng(seed)
    draws = np.arange(len(a))[:, None]
    pick_a = rng.integers(0, a.shape[1], size=a.shape)
    pick_b = rng.integers(0, b.shape[1], size=b.shape)
    diff = a[draws, pick_a].mean(axis=1) - b[draws, pick_b].mean(axis=1)
    low, high = np.percentile(diff, [2.5, 97.5])
    return float(low), float(high)


def prediction_half_width(std: float, n: int) -> float:
    """Half-width of the 95% prediction interval of one new run's difference from the mean of n runs.

    ``t(n-1) * std * sqrt(1 + 1/n)`` with ``std`` the n runs' sample standard deviation: how far a single
    run may fall from their mean by chance alone (n >= 2).
    """
    return float(scipy.stats.t.ppf(0.975, n - 1) * std * np.sqrt(1 + 1 / n))
