"""Task metrics, computed with scikit-learn (``evaluate.load`` needs the hub, which we cannot reach)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from farlab.registry import Registry

MetricFn = Callable[[np.ndarray, np.ndarray], float]
METRICS: Registry[MetricFn] = Registry("metric")

METRICS.add("accuracy", lambda preds, labels: float(accuracy_score(labels, preds)))
METRICS.add("f1", lambda preds, labels: float(f1_score(labels, preds, average="binary", zero_division=0)))
METRICS.add("macro_f1", lambda preds, labels: float(f1_score(labels, preds, average="macro", zero_division=0)))
METRICS.add("mcc", lambda preds, labels: float(matthews_corrcoef(labels, preds)))


def compute_metrics(names: Sequence[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS.get(name)(np.asarray(preds), np.asarray(labels)) for name in names}
