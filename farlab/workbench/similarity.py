"""Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited").

``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels ``K = X X^T``, ``L = Y Y^T`` on the
same n examples (rows). Two HSIC estimators:

* biased (the paper's eq. 3): ``HSIC(K, L) = tr(K H L H) / (n - 1)^2``, ``H = I - 11^T/n``. For linear kernels
  this equals ``||Y_c^T X_c||_F^2 / (n - 1)^2`` with column-centred X, Y (eq. 5), the feature-space form:
  O(n d^2) instead of O(n^2 d), so it scales to many tokens.
* unbiased (Song et al. 2012, "Feature Selection via Dependence Maximization", eq. 5), with ``K~``, ``L~`` the
  kernels with zeroed diagonals: ``[tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))``.
  Its CKA is not biased upwards for few examples with many features, but it needs n > 3 and the n x n Grams.

Hand-written: no maintained library (scikit-learn, scipy) ships CKA or HSIC; the formulas are a few lines.
"""

from __future__ import annotations

import numpy as np


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"representations must be [n examples, features], got shape {x.shape}")
    return x


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same examples: {x.shape[0]} rows vs {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("CKA needs at least 2 examples")


def linear_gram(x: np.ndarray) -> np.ndarray:
    x = _as_float(x)
    return x @ x.T


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """``tr(K H L H) / (n - 1)^2`` (Gretton et al. 2005)."""
    n = k.shape[0]
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC; needs n > 3."""
    n = k.shape[0]
    if n <= 3:
        raise ValueError(f"the unbiased HSIC estimator needs more than 3 examples, got {n}")
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    term = np.sum(k * l)  # tr(K~ L~) for symmetric kernels
    term += k.sum() * l.sum() / ((n - 1) * (n - 2))
    term -= 2.0 / (n - 2) * (ones @ k) @ (l @ ones)
    return float(term / (n * (n - 3)))


def gram_cka(k: np.ndarray, l: np.ndarray, unbiased: bool = False) -> float:
    """CKA from two kernel (Gram) matrices over the same examples."""
    hsic = hsic_unbiased if unbiased else hsic_biased
    denominator = np.sqrt(hsic(k, k) * hsic(l, l))
    return float(hsic(k, l) / denominator) if denominator > 0 else float("nan")


def linear_cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA of two representations of the same n examples ([n, d1] and [n, d2]).

    The biased estimator uses the feature-space form (eq. 5 of Kornblith et al.); the unbiased one the Grams.
    """
    x, y = _as_float(x), _as_float(y)
    _check_pair(x, y)
    if unbiased:
        return gram_cka(linear_gram(x), linear_gram(y), unbiased=True)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denominator) if denominator > 0 else float("nan")


def cka_matrix(student: dict[int, np.ndarray], teacher: dict[int, np.ndarray], unbiased: bool = False) -> np.ndarray:
    """CKA of every student layer (rows, in the dicts' key order) with every teacher layer (columns)."""
    return np.array([[linear_cka(student[s], teacher[t], unbiased) for t in teacher] for s in student])


def monotone_layer_map(cka: np.ndarray, student_layers: list[int], teacher_layers: list[int]) -> list[tuple[int, int]]:
    """The monotone map with the maximum total CKA: student blocks in order, each paired with one teacher block,
    teacher blocks strictly increasing (non-decreasing when the student has more blocks than the teacher).

    The embedding layer (0) is left out on both sides: the layer maps pair blocks. A dynamic programme over
    (student block, teacher block): ``best[i][j] = cka[i][j] + max(best[i-1][j'] for j' < j)`` (``<=`` when
    non-decreasing), O(Ls * Lt^2).
    """
    rows = [r for r, s in enumerate(student_layers) if s > 0]
    cols = [c for c, t in enumerate(teacher_layers) if t > 0]
    if not rows or not cols:
        return []
    strict = len(rows) <= len(cols)
    score = np.nan_to_num(cka[np.ix_(rows, cols)], nan=-1.0)  # an undefined CKA (constant layer) never wins
    n, m = score.shape
    best = np.full((n, m), -np.inf)
    back = np.zeros((n, m), dtype=int)
    best[0] = score[0]
    for i in range(1, n):
        for j in range(m):
            prev = best[i - 1, :j] if strict else best[i - 1, : j + 1]
            if prev.size and np.isfinite(prev.max()):
                back[i, j] = int(prev.argmax())
                best[i, j] = score[i, j] + prev.max()
    j = int(best[-1].argmax())
    path = [j]
    for i in range(n - 1, 0, -1):
        j = back[i, j]
        path.append(j)
    path.reverse()
    return [(student_layers[rows[i]], teacher_layers[cols[j]]) for i, j in enumerate(path)]
