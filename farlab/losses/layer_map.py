"""Which student layer learns from which teacher layer.

Indices live in the space of :mod:`farlab.losses.base`: 0 = embeddings, 1..L = transformer blocks
(``hidden_states[i]`` / ``attentions[i - 1]``). ``uniform``, ``last_n`` and ``first_last`` only ever pair
blocks (1..L); ``custom`` may also name 0 (embeddings) for feature losses. Attention losses drop pairs
with a 0 because embeddings have no attention map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from farlab.registry import Registry

Pairs = list[tuple[int, int]]
LayerMapFn = Callable[..., Pairs]
LAYER_MAPS: Registry[LayerMapFn] = Registry("layer map strategy")


def _fit_error(strategy: str, student: int, teacher: int, detail: str) -> ValueError:
    return ValueError(
        f"layer map {strategy!r} does not fit student depth {student} and teacher depth {teacher}: {detail} "
        f"(valid layers: student 0..{student}, teacher 0..{teacher}; 0 = embeddings, 1..L = blocks)"
    )


def _check_depths(strategy: str, student: int, teacher: int) -> None:
    if student < 1 or teacher < 1:
        raise _fit_error(strategy, student, teacher, "both models need at least one block")


def uniform(student: int, teacher: int, **_: object) -> Pairs:
    """Every student block ``i`` -> teacher block ``ceil(i * Lt / Ls)`` (12->4: 3, 6, 9, 12)."""
    _check_depths("uniform", student, teacher)
    return [(i, -(-i * teacher // student)) for i in range(1, student + 1)]


def last_n(student: int, teacher: int, n: int | None = None, **_: object) -> Pairs:
    """The last ``n`` student blocks -> the last ``n`` teacher blocks, in order."""
    _check_depths("last_n", student, teacher)
    if n is None or not 1 <= n <= min(student, teacher):
        raise _fit_error("last_n", student, teacher, f"n={n} but must be in 1..{min(student, teacher)}")
    return [(student - n + j, teacher - n + j) for j in range(1, n + 1)]


def first_last(student: int, teacher: int, **_: object) -> Pairs:
    """First block -> first block, last block -> last block (one pair when both have depth 1)."""
    _check_depths("first_last", student, teacher)
    pairs = [(1, 1), (student, teacher)]
    return list(dict.fromkeys(pairs))


def custom(student: int, teacher: int, pairs: Sequence[Sequence[int]] | None = None, **_: object) -> Pairs:
    """Explicit ``[[student_layer, teacher_layer], ...]``; 0 (embeddings) is allowed."""
    if not pairs:
        raise _fit_error("custom", student, teacher, "custom needs a non-empty pairs list like [[1, 2], [2, 4]]")
    out: Pairs = []
    for pair in pairs:
        if len(pair) != 2:
            raise _fit_error("custom", student, teacher, f"pair {list(pair)} must have exactly two layers")
        s, t = int(pair[0]), int(pair[1])
        if not 0 <= s <= student:
            raise _fit_error("custom", student, teacher, f"pair {[s, t]}: student layer {s} out of range 0..{student}")
        if not 0 <= t <= teacher:
            raise _fit_error("custom", student, teacher, f"pair {[s, t]}: teacher layer {t} out of range 0..{teacher}")
        out.append((s, t))
    return out


for _name, _fn in (("uniform", uniform), ("last_n", last_n), ("first_last", first_last), ("custom", custom)):
    LAYER_MAPS.register(_name, _fn)


def build_layer_map(
    strategy: str,
    student_layers: int,
    teacher_layers: int,
    n: int | None = None,
    pairs: Sequence[Sequence[int]] | None = None,
) -> Pairs:
    """Resolve a strategy name to ``[(student_layer, teacher_layer), ...]`` for these depths."""
    return LAYER_MAPS.get(strategy)(student_layers, teacher_layers, n=n, pairs=pairs)
