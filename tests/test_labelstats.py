import numpy as np
import pytest

from parlab import labelstats


def test_phi_conditional_cooccurrence_on_hand_data():
    y = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0], [1, 1, 0]])
    c = labelstats.cooccurrence(y)
    assert c[0, 1] == 2 and c[0, 0] == 3 and c[2, 2] == 1
    cond = labelstats.conditional(y)
    assert cond[0, 1] == pytest.approx(2 / 3)  # P(b | a)
    assert cond[1, 0] == pytest.approx(2 / 3)
    p = labelstats.phi(y)
    assert p[0, 0] == pytest.approx(1.0)
    assert p[0, 1] == pytest.approx(np.corrcoef(y[:, 0], y[:, 1])[0, 1])
    assert labelstats.imbalance_ratio(y).tolist() == [3.0, 3.0, 3.0]
    assert labelstats.label_cardinality(y).tolist() == [2, 2, 1, 2]


def test_ignored_entries_excluded_from_positive_ratio():
    y = np.array([[1], [-1], [0], [0]])
    assert labelstats.positive_ratio(y)[0] == pytest.approx(1 / 3)


def test_balancing_independent_attributes_is_feasible():
    # all four combinations of two attributes present -> uniform weights balance both
    y = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0], [0, 0]])
    res = labelstats.balancing_weights(y)
    assert res.feasible
    assert np.allclose(res.priors, 0.5, atol=1e-7)
    assert res.weights.sum() == pytest.approx(1.0) and (res.weights >= -1e-12).all()
    assert np.allclose(res.weights @ y, res.priors)


def test_balancing_three_exclusive_bins_is_off_by_one_sixth():
    y = np.eye(3, dtype=int)[[0, 0, 0, 1, 2, 2]]
    res = labelstats.balancing_weights(y)
    assert not res.feasible
    assert res.max_deviation == pytest.approx(1 / 6, abs=1e-7)
    assert np.allclose(res.priors, 1 / 3, atol=1e-7)
