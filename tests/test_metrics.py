"""Xian et al. metrics from per-class counts, on cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from azsl_flower.common.metrics import (
    ClassCounts,
    count_predictions,
    harmonic,
    per_class_top1,
    zsl_gzsl,
)


def test_per_class_top1_is_mean_of_class_accuracies():
    # class 0: 9/10, class 1: 1/1 -> per-class mean 0.95, while overall accuracy is 10/11
    correct, total = np.array([9, 1]), np.array([10, 1])
    assert per_class_top1(correct, total) == pytest.approx(0.95)
    assert per_class_top1(correct, total) != pytest.approx(correct.sum() / total.sum())


def test_per_class_top1_ignores_empty_classes():
    # class 1 has no test samples: it must not count as a 0% class
    assert per_class_top1(np.array([1, 0, 3]), np.array([2, 0, 4])) == pytest.approx(0.625)
    assert per_class_top1(np.zeros(3), np.zeros(3)) == 0.0


def test_harmonic():
    assert harmonic(0.5, 0.25) == pytest.approx(1 / 3)
    assert harmonic(0.4, 0.4) == pytest.approx(0.4)
    assert harmonic(0.0, 0.9) == 0.0
    assert harmonic(0.0, 0.0) == 0.0


def _counts():
    # 4 classes: 0, 1 seen; 2, 3 unseen
    return ClassCounts(
        seen_correct=np.array([8, 1, 0, 0]),
        seen_total=np.array([10, 2, 0, 0]),  # s = (0.8 + 0.5) / 2 = 0.65
        unseen_correct=np.array([0, 0, 3, 0]),
        unseen_total=np.array([0, 0, 4, 5]),  # u = (0.75 + 0) / 2 = 0.375
        zsl_correct=np.array([0, 0, 4, 1]),  # restricted to unseen: (1 + 0.2) / 2 = 0.6
    )


def test_zsl_gzsl_unseen_label_space():
    m = zsl_gzsl(_counts(), "unseen")
    assert m["s"] == pytest.approx(0.65)
    assert m["u"] == pytest.approx(0.375)
    assert m["zsl"] == pytest.approx(0.6)
    assert m["h"] == pytest.approx(2 * 0.375 * 0.65 / (0.375 + 0.65))


def test_zsl_gzsl_all_label_space_reports_u_as_t1():
    m = zsl_gzsl(_counts(), "all")
    assert m["zsl"] == pytest.approx(0.375) == m["u"]
    assert m["s"] == pytest.approx(0.65)


def test_zsl_gzsl_bad_label_space():
    with pytest.raises(ValueError, match="zsl_label_space"):
        zsl_gzsl(_counts(), "seen")


def test_class_counts_addition():
    a = _counts()
    b = ClassCounts(*(np.arange(4) + i for i in range(5)))
    c = a + b
    assert isinstance(c, ClassCounts)
    for f in ("seen_correct", "seen_total", "unseen_correct", "unseen_total", "zsl_correct"):
        np.testing.assert_array_equal(getattr(c, f), getattr(a, f) + getattr(b, f))
    np.testing.assert_array_equal(a.seen_total, [10, 2, 0, 0])  # operands untouched


def test_counts_summed_over_owners_give_pooled_metric():
    # two owners each see half of a class's test images: metrics come from summed counts
    o1 = ClassCounts(*(np.array(v) for v in ([1, 0], [1, 0], [0, 2], [0, 4], [0, 3])))
    o2 = ClassCounts(*(np.array(v) for v in ([3, 0], [3, 0], [0, 0], [0, 4], [0, 1])))
    m = zsl_gzsl(o1 + o2, "unseen")
    assert m["s"] == pytest.approx(4 / 4)
    assert m["u"] == pytest.approx(2 / 8)
    assert m["zsl"] == pytest.approx(4 / 8)


def test_count_predictions():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred_all = np.array([0, 1, 1, 2, 0, 2])
    pred_zsl = np.array([2, 2, 2, 2, 2, 3])
    correct, total, zsl = count_predictions(pred_all, pred_zsl, y, True, 5)
    np.testing.assert_array_equal(total, [2, 1, 3, 0, 0])
    np.testing.assert_array_equal(correct, [1, 1, 2, 0, 0])
    np.testing.assert_array_equal(zsl, [0, 0, 2, 0, 0])


def test_count_predictions_zsl_only_on_unseen_split():
    y, pred = np.array([1, 1]), np.array([1, 0])
    _, _, zsl = count_predictions(pred, pred, y, False, 3)
    np.testing.assert_array_equal(zsl, [0, 0, 0])
    _, _, zsl = count_predictions(pred, None, y, True, 3)
    np.testing.assert_array_equal(zsl, [0, 0, 0])


def test_count_predictions_empty_split():
    empty = np.zeros(0, dtype=np.int64)
    correct, total, zsl = count_predictions(empty, empty, empty, True, 4)
    for arr in (correct, total, zsl):
        np.testing.assert_array_equal(arr, np.zeros(4))
