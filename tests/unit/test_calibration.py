"""Calibration entries against hand-computed values and scikit-learn's own binary definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from farlab.eval.calibration import CALIBRATION_KEYS, calibration_metrics, expected_calibration_error

# 4 examples, 2 classes. Predicted: 0 (right), 1 (wrong), 1 (right), 0 (wrong).
PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
LABELS = [0, 0, 1, 1]


def test_two_class_values_by_hand():
    got = calibration_metrics(PROBS, LABELS, ["neg", "pos"])
    assert set(got) == CALIBRATION_KEYS
    assert got["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.2)) / 4)
    # sum_k (p_k - y_k)^2 per example: 0.01+0.01, 0.36+0.36, 0.09+0.09, 0.64+0.64
    assert got["brier"] == pytest.approx((0.02 + 0.72 + 0.18 + 1.28) / 4)
    # Each confidence has its own 1/15-wide bin: |1-.9| + |0-.6| + |1-.7| + |0-.8|, over 4 examples.
    assert got["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.8) / 4)
    assert got["mean_confidence"] == pytest.approx((0.9 + 0.6 + 0.7 + 0.8) / 4)
    h = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (0.9, 0.4, 0.3, 0.8)]
    assert got["mean_entropy"] == pytest.approx(sum(h) / 4)
    assert got["per_class_recall"] == {"neg": 0.5, "pos": 0.5}
    assert got["pred_class_rate"] == {"neg": 0.5, "pos": 0.5}


def test_binary_case_agrees_with_sklearn_definitions():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0.01, 0.99, size=200)
    labels = (rng.uniform(size=200) < p1).astype(int)
    got = calibration_metrics(np.stack([1 - p1, p1], axis=1), labels, ["a", "b"])
    assert got["nll"] == pytest.approx(log_loss(labels, p1))
    # The binary Brier score is on p_1 only; the multi-class sum counts both (equal) squared errors.
    assert got["brier"] == pytest.approx(2 * brier_score_loss(labels, p1))


def test_three_classes_by_hand_with_an_unseen_class():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    got = calibration_metrics(probs, [0, 2], ["a", "b", "c"])
    assert got["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.64 + 0.81)) / 2)
    assert got["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2)
    assert got["per_class_recall"] == {"a": 1.0, "b": None, "c": 0.0}  # no gold "b": recall undefined
    assert got["pred_class_rate"] == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_ece_of_a_perfectly_calibrated_construction_is_zero():
    # In every bin the accuracy equals the confidence: 10 rows at 0.8 with 8 right, 10 at 0.6 with 6 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    labels = [0] * 8 + [1] * 2 + [0] * 6 + [1] * 4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_model_by_hand():
    # Confidence 0.95 everywhere, 60% right: one bin, |0.6 - 0.95| = 0.35. Plus a 3-class row set at
    # confidence 0.5 (bin (7/15, 8/15]) with 1 of 2 right: gap 0. Weighted: 10/12 * 0.35.
    probs = np.array([[0.95, 0.05]] * 10)
    labels = [0] * 6 + [1] * 4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35)
    probs3 = np.array([[0.95, 0.05, 0.0]] * 10 + [[0.5, 0.3, 0.2]] * 2)
    assert expected_calibration_error(probs3, labels + [0, 2]) == pytest.approx(10 / 12 * 0.35)


def test_ece_bins_are_right_closed():
    # Confidence exactly 8/15 belongs to bin (7/15, 8/15], with the 0.5 row: one bin, mean confidence
    # (8/15 + 0.5) / 2, accuracy 1/2.
    probs = np.array([[8 / 15, 7 / 15], [0.5, 0.5]])
    assert expected_calibration_error(probs, [0, 1]) == pytest.approx(abs(0.5 - (8 / 15 + 0.5) / 2))


@pytest.mark.parametrize(
    ("probs", "labels", "names", "pattern"),
    [
        (np.zeros((0, 2)), [], ["a", "b"], "non-empty"),
        (PROBS, [0, 1], ["a", "b"], "does not match"),
        (PROBS, LABELS, ["a", "b", "c"], "the task has 3"),
        (PROBS, [0, 1, 2, 0], ["a", "b"], r"class ids in \[0, 1\]"),
    ],
)
def test_bad_input_is_refused_by_name(probs, labels, names, pattern):
    with pytest.raises(ValueError, match=pattern):
        calibration_metrics(probs, labels, names)
