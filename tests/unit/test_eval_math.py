"""Metrics and the transfer gap against hand-computed values."""

import math

import numpy as np
import pytest

from farlab.eval.metrics import compute_metrics
from farlab.eval.transfer import transfer_gap


def test_mcc_accuracy_f1_on_a_known_confusion_matrix():
    # TP=3, TN=4, FP=1, FN=2
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    tp, tn, fp, fn = 3, 4, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    got = compute_metrics(["mcc", "accuracy", "f1"], preds, labels)
    assert got["mcc"] == pytest.approx(mcc)
    assert got["accuracy"] == pytest.approx(0.7)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_unknown_metric_names_choices():
    with pytest.raises(ValueError, match=r"unknown metric 'acc'.*accuracy"):
        compute_metrics(["acc"], np.zeros(2), np.zeros(2))


def test_transfer_gap_by_hand():
    gap = transfer_gap("mcc", teacher=0.40, student_pre=0.10, student_post=0.25)
    assert gap["teacher_advantage"] == pytest.approx(0.30)
    assert gap["student_gain"] == pytest.approx(0.15)
    assert gap["transfer_efficiency"] == pytest.approx(0.5)
    assert gap["transfer_efficiency_note"] is None


@pytest.mark.parametrize("teacher", [0.1, 0.05])
def test_transfer_efficiency_is_null_with_a_reason_when_teacher_not_ahead(teacher):
    gap = transfer_gap("mcc", teacher=teacher, student_pre=0.1, student_post=0.2)
    assert gap["transfer_efficiency"] is None
    assert "not ahead" in gap["transfer_efficiency_note"]


@pytest.mark.parametrize(("metric", "teacher", "pre", "efficiency"), [
    ("mcc", 0.02, 0.0, None),  # an untuned base teacher's head: 0.02 < 0.05 of MCC's range
    ("mcc", 0.05, 0.0, 0.1 / 0.05),  # at the floor
    ("bleu", 3.0, 1.0, None),  # 2 BLEU < 5 (5% of 100)
    ("bleu", 21.0, 1.0, 0.1 / 20.0),
    ("perplexity", 40.0, 40.02, None),  # lower is better: the teacher is 0.02 ahead
])
def test_transfer_efficiency_needs_a_teacher_meaningfully_ahead(metric, teacher, pre, efficiency):
    post = pre - 0.1 if metric == "perplexity" else pre + 0.1
    gap = transfer_gap(metric, teacher=teacher, student_pre=pre, student_post=post)
    if efficiency is None:
        assert gap["transfer_efficiency"] is None and "too small to divide by" in gap["transfer_efficiency_note"]
    else:
        assert gap["transfer_efficiency"] == pytest.approx(efficiency) and gap["transfer_efficiency_note"] is None


def test_transfer_gap_without_teacher():
    gap = transfer_gap("accuracy", teacher=None, student_pre=0.5, student_post=0.6)
    assert gap["teacher_advantage"] is None and gap["transfer_efficiency"] is None
    assert gap["student_gain"] == pytest.approx(0.1)
    assert "no teacher" in gap["transfer_efficiency_note"]


def test_score_lm_scores_both_parts_by_hand_and_refuses_a_listed_metric_without_its_input():
    """Perplexity pools the summed NLLs over target tokens; exact match compares texts. A vision task that lists
    perplexity gets generations only, so it fails loudly instead of dropping the score."""
    import types

    from farlab.eval.lm import score_lm
    from farlab.eval.predictions import TextPredictions

    data = types.SimpleNamespace(name="t", kind="causal_lm", metrics=["perplexity", "exact_match"])
    got = score_lm(data, TextPredictions(texts=["a b", "c"], nll=[(2.0, 2), (4.0, 2)]), ["a b", "d"])
    assert got["perplexity"] == pytest.approx(math.exp(6.0 / 4))
    assert got["exact_match"] == pytest.approx(0.5)
    vision = types.SimpleNamespace(name="ocr", kind="vision_lm", metrics=["edit_similarity", "perplexity"])
    with pytest.raises(ValueError, match=r"'ocr' lists \['perplexity'\], which need target NLLs.*predicts generations"):
        score_lm(vision, TextPredictions(texts=["x"]), ["x"])
