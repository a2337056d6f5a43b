"""Layer maps on (teacher -> student) depths 12->4, 6->3, 4->4, with expected pairs written by hand."""

import pytest

from farlab.losses.layer_map import LAYER_MAPS, build_layer_map

# (strategy, kwargs, teacher depth, student depth) -> [(student_layer, teacher_layer), ...]
EXPECTED = [
    ("uniform", {}, 12, 4, [(1, 3), (2, 6), (3, 9), (4, 12)]),
    ("uniform", {}, 6, 3, [(1, 2), (2, 4), (3, 6)]),
    ("uniform", {}, 4, 4, [(1, 1), (2, 2), (3, 3), (4, 4)]),
    ("uniform", {}, 10, 4, [(1, 3), (2, 5), (3, 8), (4, 10)]),  # ceil(i * 10 / 4)
    ("last_n", {"n": 2}, 12, 4, [(3, 11), (4, 12)]),
    ("last_n", {"n": 2}, 6, 3, [(2, 5), (3, 6)]),
    ("last_n", {"n": 2}, 4, 4, [(3, 3), (4, 4)]),
    ("last_n", {"n": 4}, 12, 4, [(1, 9), (2, 10), (3, 11), (4, 12)]),
    ("first_last", {}, 12, 4, [(1, 1), (4, 12)]),
    ("first_last", {}, 6, 3, [(1, 1), (3, 6)]),
    ("first_last", {}, 4, 4, [(1, 1), (4, 4)]),
    ("custom", {"pairs": [[1, 2], [2, 4]]}, 12, 4, [(1, 2), (2, 4)]),
    ("custom", {"pairs": [[0, 0], [3, 6]]}, 6, 3, [(0, 0), (3, 6)]),
    ("custom", {"pairs": [[4, 4]]}, 4, 4, [(4, 4)]),
]


def test_registry_has_all_strategies():
    assert LAYER_MAPS.names() == ["custom", "first_last", "last_n", "uniform"]


@pytest.mark.parametrize("strategy,kwargs,teacher,student,expected", EXPECTED)
def test_expected_pairs(strategy, kwargs, teacher, student, expected):
    assert build_layer_map(strategy, student, teacher, **kwargs) == expected


def test_builtin_strategies_never_pair_embeddings():
    for strategy, kw in [("uniform", {}), ("last_n", {"n": 1}), ("first_last", {})]:
        for student, teacher in [(4, 12), (3, 6), (4, 4), (6, 3), (1, 1)]:
            pairs = build_layer_map(strategy, student, teacher, **kw)
            assert pairs and all(1 <= s <= student and 1 <= t <= teacher for s, t in pairs)


@pytest.mark.parametrize("strategy,kwargs", [
    ("last_n", {"n": 5}),
    ("last_n", {"n": 0}),
    ("custom", {"pairs": [[5, 1]]}),
    ("custom", {"pairs": [[1, 13]]}),
    ("custom", {"pairs": [[-1, 1]]}),
    ("custom", {"pairs": []}),
])
def test_misfit_errors_name_both_depths(strategy, kwargs):
    with pytest.raises(ValueError) as e:
        build_layer_map(strategy, 4, 12, **kwargs)
    msg = str(e.value)
    assert "student depth 4" in msg and "teacher depth 12" in msg and "0..4" in msg and "0..12" in msg


def test_unknown_strategy_suggests():
    with pytest.raises(ValueError, match="did you mean 'uniform'"):
        build_layer_map("unifrom", 4, 12)
