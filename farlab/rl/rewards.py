"""Reward functions for GRPO, one registry entry each, built on farlab's task metrics (farlab.eval.metrics).

A reward scores one completion against its prompt row's columns (``reference``: the target translation, OCR
text or label word). Metric rewards call the task metric on a one-pair list, so there is one implementation per
metric: corpus chrF of one pair *is* sentence chrF, and edit similarity and exact match are per-pair means already.
BLEU is the exception: corpus BLEU of one short sentence is 0 whenever one n-gram order has no match, so the
reward is sacrebleu's own sentence BLEU (effective n-gram order, exponential smoothing), the standard
sentence-level variant. BLEU and chrF are divided by 100, so every task reward lies in [0, 1] (length_penalty
in [-1, 0]); GRPO normalises rewards within each prompt's group, and the scale matters only against the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sacrebleu

from farlab.errors import ConfigError
from farlab.eval.metrics import METRICS, answer_word
from farlab.registry import Registry

ScoreFn = Callable[[str, str], float]  # (completion text, reference) -> reward


@dataclass(frozen=True)
class Reward:
    """One reward: how a completion is scored, and which prompt-row column it needs."""

    name: str
    score: ScoreFn
    column: str = "reference"


REWARDS: Registry[Reward] = Registry("reward")


def _metric(name: str, scale: float = 1.0) -> ScoreFn:
    metric = METRICS.get(name)
    return lambda completion, reference: metric([completion], [reference]) / scale


def _sentence_bleu(completion: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(completion, [reference]).score / 100.0


def _label_match(completion: str, reference: str) -> float:
    return float(answer_word(completion) == answer_word(reference))


def _length_penalty(completion: str, reference: str) -> float:
    """Minus the relative word-count difference, floored at -1 (0 when the lengths match)."""
    got, want = len(completion.split()), len(reference.split())
    return -min(1.0, abs(got - want) / max(want, 1))


for _r in (
    Reward("bleu", _sentence_bleu),
    Reward("chrf", _metric("chrf", 100.0)),
    Reward("edit_similarity", _metric("edit_similarity")),
    Reward("exact_match", _metric("exact_match")),
    Reward("label_match", _label_match),
    Reward("length_penalty", _length_penalty),
):
    REWARDS.register(_r.name, _r)


class RewardError(ValueError):
    """A reward function returned a value GRPO cannot use (NaN or infinite)."""


def completion_text(completion: Any) -> str:
    """TRL hands text completions as strings and chat completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if isinstance(message.get("content"), str))


def checked(name: str, values: Sequence[float]) -> list[float]:
    """The rewards as floats; a NaN or infinite one stops training with the reward's name (GRPO would spread
    it through the group's normalisation into every advantage)."""
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise RewardError(f"reward {name!r} returned {out[bad[0]]} for completion {bad[0]} "
                          f"({len(bad)} of {len(out)} non-finite); rewards must be finite numbers")
    return out


class RewardFunction:
    """A registered reward in the form ``trl.GRPOTrainer`` calls: ``(prompts, completions, **columns) -> list``.

    ``__name__`` is the reward's name, so TRL logs it as ``rewards/<name>/mean``.
    """

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.__name__ = reward.name

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if self.reward.column not in columns:
            raise ConfigError(f"reward {self.reward.name!r} needs the prompt column {self.reward.column!r}; "
                              f"this task's prompts have: {', '.join(sorted(k for k in columns if k.isidentifier()))}")
        references = columns[self.reward.column]
        values = [self.reward.score(completion_text(c), str(r)) for c, r in zip(completions, references, strict=True)]
        return checked(self.reward.name, values)


def reward_problems(names: Sequence[str], weights: Sequence[float] | None) -> list[str]:
    """Unknown reward names (did-you-mean) and a weight list that does not match them."""
    problems = [str(err) for err in (_lookup(n) for n in names) if err is not None]
    if not names:
        problems.append(f"rl.rewards is empty; choose at least one of: {', '.join(REWARDS.names())}")
    if weights is not None and len(weights) != len(names):
        problems.append(f"rl.reward_weights has {len(weights)} weights for {len(names)} rewards {list(names)}; "
                        "give one weight per reward (or null: all 1)")
    return problems


def _lookup(name: str) -> ValueError | None:
    try:
        REWARDS.get(name, context="rl.rewards")
    except ValueError as err:
        return err
    return None
