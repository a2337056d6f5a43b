"""Linear CKA against its defining properties, a closed form and an independent debiased-Gram implementation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import ortho_group, pearsonr

from farlab.workbench.similarity import (
    cka_matrix,
    gram_cka,
    hsic_biased,
    hsic_unbiased,
    linear_cka,
    linear_gram,
    monotone_layer_map,
)


@pytest.fixture
def reps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(60, 5))  # related but not identical
    return x, y


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(reps, unbiased):
    x, _ = reps
    assert linear_cka(x, x, unbiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(reps, unbiased):
    x, y = reps
    base = linear_cka(x, y, unbiased)
    q = ortho_group.rvs(8, random_state=1)
    assert linear_cka(x @ q, y, unbiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y, unbiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y - 2.0, unbiased) == pytest.approx(base, abs=1e-10)  # centring: shifts too


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_not_invariant_to_a_general_invertible_linear_map(reps, unbiased):
    x, y = reps
    a = np.diag([10.0, 1, 1, 1, 1, 1, 1, 0.1]) @ ortho_group.rvs(8, random_state=2)  # invertible, not orthogonal
    assert abs(np.linalg.det(a)) > 0
    assert abs(linear_cka(x @ a, y, unbiased) - linear_cka(x, y, unbiased)) > 1e-2


def test_feature_space_form_equals_the_gram_form(reps):
    x, y = reps
    via_gram = gram_cka(linear_gram(x), linear_gram(y))
    assert linear_cka(x, y) == pytest.approx(via_gram, abs=1e-12)
    # and the Gram form is tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) written out by hand
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, l = x @ x.T, y @ y.T
    by_hand = np.trace(k @ h @ l @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l @ h @ l @ h))
    assert via_gram == pytest.approx(by_hand, abs=1e-12)
    assert hsic_biased(k, l) == pytest.approx(np.trace(k @ h @ l @ h) / (n - 1) ** 2)


def test_one_dimensional_cka_is_the_squared_pearson_correlation():
    x = np.array([[1.0], [2.0], [3.0], [5.0]])
    y = np.array([[2.0], [1.0], [4.0], [3.0]])
    # by hand: centred x = (-1.75, -0.75, 0.25, 2.25), y = (-0.5, -1.5, 1.5, 0.5); sum xy = 3.5,
    # sum x^2 = 8.75, sum y^2 = 5  ->  CKA = 3.5^2 / (8.75 * 5) = 0.28
    assert linear_cka(x, y) == pytest.approx(0.28, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(pearsonr(x[:, 0], y[:, 0]).statistic ** 2, abs=1e-12)


def _debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s reference route: debias each Gram by 'unbiased centring', then a cosine of the Grams."""
    def centre(g: np.ndarray) -> np.ndarray:
        g = g.copy()
        n = len(g)
        np.fill_diagonal(g, 0)
        means = g.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g -= means[:, None] + means[None, :]
        np.fill_diagonal(g, 0)
        return g

    kc, lc = centre(x @ x.T), centre(y @ y.T)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def test_unbiased_estimator_matches_the_debiased_gram_route(reps):
    x, y = reps
    assert linear_cka(x, y, unbiased=True) == pytest.approx(_debiased_cka(x, y), abs=1e-10)
    assert linear_cka(x, y, unbiased=True) != pytest.approx(linear_cka(x, y), abs=1e-4)
    with pytest.raises(ValueError, match="more than 3"):
        hsic_unbiased(np.eye(3), np.eye(3))


def test_unbiased_hsic_of_independent_noise_is_near_zero_where_the_biased_one_is_not():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 200)), rng.normal(size=(40, 200))  # few examples, many features
    assert abs(linear_cka(x, y, unbiased=True)) < 0.1
    assert linear_cka(x, y) > 0.5  # the biased estimator's known upward bias


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\[n examples, features\]"):
        linear_cka(np.ones(4), np.ones(4))


def test_cka_matrix_rows_are_student_layers():
    rng = np.random.default_rng(4)
    s = {0: rng.normal(size=(20, 3)), 1: rng.normal(size=(20, 3))}
    t = {0: s[1], 1: rng.normal(size=(20, 4)), 2: s[0]}
    m = cka_matrix(s, t)
    assert m.shape == (2, 3)
    assert m[1, 0] == pytest.approx(1.0) and m[0, 2] == pytest.approx(1.0)


def _brute_force(cka: np.ndarray, strict: bool) -> float:
    ls, lt = cka.shape[0] - 1, cka.shape[1] - 1
    choose = itertools.combinations if strict else itertools.combinations_with_replacement
    return max(sum(cka[i + 1, t] for i, t in enumerate(ts)) for ts in choose(range(1, lt + 1), ls))


@pytest.mark.parametrize("shape", [(4, 7), (3, 3), (5, 3)])
def test_suggested_layer_map_is_monotone_and_maximises_total_cka(shape):
    cka = np.random.default_rng(sum(shape)).uniform(size=shape)
    pairs = monotone_layer_map(cka, list(range(shape[0])), list(range(shape[1])))
    students, teachers = zip(*pairs)
    assert list(students) == list(range(1, shape[0]))  # every block, in order, no embeddings
    strict = shape[0] <= shape[1]
    assert all((b > a) if strict else (b >= a) for a, b in itertools.pairwise(teachers))
    assert sum(cka[s, t] for s, t in pairs) == pytest.approx(_brute_force(cka, strict))


def test_suggested_layer_map_by_hand():
    # student blocks 1, 2 vs teacher blocks 1..3. Strictly increasing pairings: (1,2) 0.9 + 0.85 = 1.75,
    # (1,3) 0.9 + 0.3 = 1.2, (2,3) 0.95 + 0.3 = 1.25 -> 1->1, 2->2 (each row's argmax, 1->2 2->2, is not monotone)
    cka = np.array([[0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.9, 0.95, 0.1],
                    [0.0, 0.2, 0.85, 0.3]])
    assert monotone_layer_map(cka, [0, 1, 2], [0, 1, 2, 3]) == [(1, 1), (2, 2)]
