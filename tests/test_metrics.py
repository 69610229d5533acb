import numpy as np
import pytest

from parlab.metrics import balanced_labels, pedestrian_metrics


def test_hand_computed_case():
    gt = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.7], [0.6, 0.3, 0.1], [0.2, 0.6, 0.3]])
    m = pedestrian_metrics(gt, probs, attributes=["a", "b", "c"])
    # attr a: TP 2/2, TN 2/2 -> 1.0; b: TP 1/2, TN 1/2 -> 0.5; c: TP 1/2, TN 2/2 -> 0.75
    assert m.ma == pytest.approx((1.0 + 0.5 + 0.75) / 3)
    # per image: |Y∩Ŷ|, |Y|, |Ŷ|: (1,2,1) (2,2,2) (1,2,1) (0,0,1)
    assert m.acc == pytest.approx((1 / 2 + 1 + 1 / 2 + 0) / 4)
    assert m.prec == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert m.rec == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)
    assert m.f1 == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    per_image_f1 = [2 / 3, 1.0, 2 / 3, 0.0]
    assert m.instance_f1 == pytest.approx(np.mean(per_image_f1))
    assert m.per_attribute.loc["b", "tpr"] == pytest.approx(0.5)
    assert m.per_attribute.loc["c", "precision"] == pytest.approx(1.0)


def test_threshold_is_strict_and_per_attribute():
    gt = np.array([[1, 1], [0, 0]])
    probs = np.array([[0.5, 0.5], [0.2, 0.2]])
    assert pedestrian_metrics(gt, probs).ma == pytest.approx(0.5)  # 0.5 is not > 0.5: TPR 0, TNR 1
    m = pedestrian_metrics(gt, probs, threshold=np.array([0.45, 0.5]))
    assert m.per_attribute["tpr"].tolist() == [1.0, 0.0]


def test_empty_predictions_and_empty_ground_truth_score_zero():
    gt = np.array([[0, 0], [1, 0]])
    probs = np.zeros((2, 2))
    m = pedestrian_metrics(gt, probs)
    assert m.acc == 0 and m.prec == 0 and m.rec == 0 and m.f1 == 0 and m.instance_f1 == 0


def test_degenerate_attribute_is_nan_and_excluded_unless_parity():
    gt = np.array([[1, 0], [0, 0], [1, 0]])  # attribute 1 has no positives
    probs = np.array([[0.9, 0.1], [0.1, 0.1], [0.8, 0.1]])
    m = pedestrian_metrics(gt, probs)
    assert m.num_degenerate == 1
    assert np.isnan(m.per_attribute["ma"].iloc[1])
    assert m.ma == pytest.approx(1.0)
    ref = pedestrian_metrics(gt, probs, parity=True)
    assert ref.ma == pytest.approx((1.0 + 0.5) / 2)  # reference: 0/(0+1e-20) + 1 -> 0.5


def test_ignored_entries_do_not_count():
    gt = np.array([[1, -1], [0, 1], [1, 0]])
    probs = np.array([[0.9, 0.9], [0.1, 0.9], [0.9, 0.1]])
    m = pedestrian_metrics(gt, probs)
    assert m.ma == pytest.approx(1.0)
    assert m.prec == pytest.approx(1.0)  # the ignored 0.9 is not a false positive
    assert m.per_attribute.loc["attr1", "negatives"] == 1


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        pedestrian_metrics(np.array([[2]]), np.array([[0.1]]))
    with pytest.raises(ValueError, match="shape|\\(N, A\\)"):
        pedestrian_metrics(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        pedestrian_metrics(np.zeros((1, 1)), np.array([[np.nan]]))


def test_balanced_setting_keeps_min_count_of_each_label_first_in_order():
    gt = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [1, 0]])
    masked, rows = balanced_labels(gt, "first")
    # attribute 0: 2 positives -> keep rows 0, 4 and the first two negatives 1, 2
    # attribute 1: 1 positive (row 2) -> keep it and the first negative (row 0)
    full = np.full(gt.shape, -1)
    full[rows] = masked
    assert full[:, 0].tolist() == [1, 0, 0, -1, 1]
    assert full[:, 1].tolist() == [0, -1, 1, -1, -1]
    assert rows.tolist() == [0, 1, 2, 4]  # row 3 has no kept entry and is dropped


def test_balanced_random_selection_is_seeded_and_balanced():
    rng = np.random.default_rng(0)
    gt = (rng.random((500, 4)) < [0.1, 0.3, 0.5, 0.9]).astype(int)
    a, ra = balanced_labels(gt, "random", seed=1)
    b, rb = balanced_labels(gt, "random", seed=1)
    c, _ = balanced_labels(gt, "random", seed=2)
    assert np.array_equal(a, b) and np.array_equal(ra, rb)
    assert not np.array_equal(a, c)
    assert ((a == 1).sum(0) == (a == 0).sum(0)).all()
    assert ((a == 1).sum(0) == np.minimum((gt == 1).sum(0), (gt == 0).sum(0))).all()


def test_balanced_metrics_score_only_kept_entries():
    gt = np.array([[1], [0], [0], [0]])
    probs = np.array([[0.9], [0.1], [0.9], [0.9]])  # the kept negative is row 1 (first)
    m = pedestrian_metrics(gt, probs, balanced=True)
    assert m.ma == pytest.approx(1.0) and m.num_images == 2
    assert m.acc == pytest.approx(0.5)  # row 0: 1/1; row 1: empty union -> 0
    assert m.setting == "balanced (first)"


def test_ranking_metrics_on_a_hand_made_case_with_a_tie():
    from parlab.metrics.ranking import attribute_auc, best_threshold_ma

    gt = np.array([[1, 1, 1], [0, 0, 1], [1, -1, 1], [0, 0, 1]])
    scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.9, 0.5], [0.4, 0.3, 0.5], [0.4, 0.1, 0.5]])
    auc = attribute_auc(gt, scores)
    # Attribute 0: the 0.9 positive beats both negatives, the 0.4 one beats 0.1 and ties 0.4: 3.5 of 4 pairs.
    # Attribute 1: the -1 is left out; the one positive (0.2) beats 0.1 and loses to 0.9. Attribute 2: one label.
    assert auc[0] == pytest.approx(0.875) and auc[1] == pytest.approx(0.5) and np.isnan(auc[2])
    best = best_threshold_ma(gt, scores)
    # No threshold separates the tied 0.4s: the best is above 0.4 (TPR 1/2, TNR 1) or below it (TPR 1, TNR 1/2).
    assert best[0] == pytest.approx(0.75) and np.isnan(best[2])
    assert best[1] == pytest.approx(0.75)  # above 0.1: TPR 1, TNR 1/2
    assert np.all(best_threshold_ma(gt, -scores)[:2] >= 0.5)  # reversed scores: never below everything-negative
