"""The statistics of comparisons on hand-made arrays: weighted mA, bootstrap resamples, t intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from parlab.metrics import pedestrian_metrics
from parlab.stats import bootstrap_weights, prediction_half_width, weighted_ma, welch_interval


def test_weighted_ma_with_unit_weights_is_the_metrics_ma():
    rng = np.random.default_rng(0)
    gt = (rng.random((60, 5)) < 0.3).astype(int)
    gt[:5, 0] = -1  # ignored entries
    gt[:, 4] = 0  # an attribute with no positives is left out
    probs = rng.random((60, 5))
    ma = weighted_ma([(probs > 0.5).astype(float)], gt, np.ones((1, 60)))[0, 0]
    assert ma == pytest.approx(pedestrian_metrics(gt, probs).ma)
    # A resample is a weighting: counting image 0 three times is the same as repeating its row.
    weights = np.ones((1, 60))
    weights[0, 0] = 3
    repeated = np.concatenate([gt[:1], gt[:1], gt])
    assert weighted_ma([(probs > 0.5).astype(float)], gt, weights)[0, 0] == pytest.approx(
        pedestrian_metrics(repeated, np.concatenate([probs[:1], probs[:1], probs])).ma)


def test_bootstrap_weights_are_seeded_resamples():
    w = bootstrap_weights(50, draws=20, seed=3)
    assert w.shape == (20, 50) and (w.sum(axis=1) == 50).all()
    assert np.array_equal(w, bootstrap_weights(50, draws=20, seed=3))


def test_welch_interval_is_the_hand_computed_one():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0])
    # By hand: means 2 and 5; sample variances 1 and 2, so squared standard errors 1/3 and 2/2 = 1;
    # se = sqrt(4/3); Welch-Satterthwaite df = (4/3)^2 / ((1/3)^2 / 2 + 1^2 / 1) = 32/19.
    half = stats.t.ppf(0.975, 32 / 19) * math.sqrt(4 / 3)
    assert welch_interval(a, b) == pytest.approx((-3 - half, -3 + half), rel=1e-12)
    low, high = welch_interval(b, a)
    assert (low, high) == pytest.approx((3 - half, 3 + half), rel=1e-12)


def test_welch_interval_with_equal_spreads_and_sizes_uses_the_pooled_degrees_of_freedom():
    # Equal variances and sizes: Welch's df is 2(n - 1), here 4, and t(0.975, 4) = 2.7764451051977934.
    a, b = np.array([10.0, 11.0, 12.0]), np.array([8.0, 9.0, 10.0])
    half = 2.7764451051977934 * math.sqrt(1 / 3 + 1 / 3)
    assert welch_interval(a, b) == pytest.approx((2 - half, 2 + half), rel=1e-12)


def test_welch_interval_degenerate_cases():
    # One run on a side: no spread to measure.
    assert all(math.isnan(v) for v in welch_interval(np.array([5.0]), np.array([3.0, 4.0, 3.5])))
    # Neither side varies: the difference itself.
    assert welch_interval(np.array([5.0, 5.0]), np.array([3.0, 3.0, 3.0])) == (2.0, 2.0)
    # One side without spread: only the other's counts, df = n_b - 1 = 1, silently. With one degree of
    # freedom t is Cauchy: t_p = tan(pi (p - 1/2)); the standard error is sqrt(2 / 2) = 1.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = welch_interval(np.array([5.0, 5.0, 5.0]), np.array([4.0, 6.0]))
    half = math.tan(math.pi * 0.475)
    assert (low, high) == pytest.approx((-half, half), rel=1e-12)


def test_prediction_half_width_of_one_run_against_three():
    # With 2 degrees of freedom the t quantile has a closed form: t_p = (2p - 1) / sqrt(2p(1 - p)).
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert prediction_half_width(2.0, 3) == pytest.approx(t * 2.0 * math.sqrt(1 + 1 / 3), rel=1e-12)
