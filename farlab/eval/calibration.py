"""Calibration and confidence of a classifier, from its class probabilities and the gold labels.

Task metrics (MCC, accuracy, ...) say how often the argmax is right; these say how much the model's
probabilities can be trusted, so an overconfident teacher or a student that collapsed onto one class
shows up in every evaluation. Each entry of :func:`calibration_metrics`:

* ``nll``: mean negative log-likelihood of the gold class (nats), ``sklearn.metrics.log_loss``.
* ``brier``: multi-class Brier score, mean over examples of ``sum_k (p_k - y_k)^2`` with ``y`` the one-hot
  gold label (range [0, 2]; for two classes it is twice the binary ``brier_score_loss`` on ``p_1``),
  ``sklearn.metrics.brier_score_loss(..., scale_by_half=False)``.
* ``ece``: top-label expected calibration error with 15 equal-width confidence bins (Guo et al. 2017).
* ``mean_confidence``: mean of the top probability.
* ``mean_entropy``: mean entropy of the predicted distributions (nats), ``scipy.stats.entropy``.
* ``per_class_recall``: {label name: recall}; None for a class with no gold example in the split.
* ``pred_class_rate``: {label name: fraction of examples predicted as that class}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import entropy
from sklearn.metrics import brier_score_loss, log_loss, recall_score

ECE_BINS = 15
# Entries :func:`calibration_metrics` adds next to the task metrics (diagnostics: no "best" is tracked for them).
CALIBRATION_KEYS = frozenset(
    {"nll", "brier", "ece", "mean_confidence", "mean_entropy", "per_class_recall", "pred_class_rate"}
)


def _check(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> None:
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty [n, classes] array, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match probabilities {probs.shape}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"probabilities have {probs.shape[1]} classes, the task has {num_classes}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class ids in [0, {probs.shape[1] - 1}], got {labels.min()}..{labels.max()}")


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: ``sum_m |B_m|/n * |acc(B_m) - conf(B_m)|`` over ``n_bins`` equal-width bins of the
    top probability, bin m = ((m-1)/M, m/M] (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    Hand-written: scikit-learn has only ``calibration_curve`` (binary, positive-class, no weights per bin)
    and no maintained library here computes the multi-class top-label ECE.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    interior = np.arange(1, n_bins) / n_bins  # m / M exactly as the division rounds it
    bins = np.searchsorted(interior, confidence, side="left")  # right-closed bins: conf == m/M falls in bin m
    # |B_m| * |acc(B_m) - conf(B_m)| = |sum of correct - sum of confidence| within the bin
    hits = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    return float(np.abs(hits - conf).sum() / len(labels))


def calibration_metrics(
    probs: np.ndarray, labels: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """The calibration entries of one classification evaluation (see the module docstring)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    _check(probs, labels, len(label_names))
    classes = list(range(len(label_names)))
    preds = probs.argmax(axis=1)
    recall = recall_score(labels, preds, labels=classes, average=None, zero_division=np.nan)
    rate = np.bincount(preds, minlength=len(classes)) / len(preds)
    return {
        "nll": float(log_loss(labels, probs, labels=classes)),
        # sklearn's multi-class Brier: mean over examples of sum over classes; scale_by_half=False keeps
        # the same sum for two classes (its binary default halves it).
        "brier": float(brier_score_loss(labels, probs, labels=classes, scale_by_half=False)),
        "ece": expected_calibration_error(probs, labels),
        "mean_confidence": float(probs.max(axis=1).mean()),
        "mean_entropy": float(entropy(probs, axis=1).mean()),
        "per_class_recall": {name: None if np.isnan(r) else float(r) for name, r in zip(label_names, recall)},
        "pred_class_rate": {name: float(r) for name, r in zip(label_names, rate)},
    }
