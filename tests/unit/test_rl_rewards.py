"""RL rewards against hand-computed values, and the reward wrapper TRL calls."""

from __future__ import annotations

import math

import pytest

from farlab.errors import ConfigError
from farlab.rl.rewards import REWARDS, Reward, RewardError, RewardFunction, reward_problems


def score(name: str, completion: str, reference: str) -> float:
    return REWARDS.get(name).score(completion, reference)


def test_chrf_is_sentence_chrf_over_100():
    # hyp "ab", ref "abc": char orders 1 (P=1, R=2/3) and 2 (P=1, R=1/2) have hypothesis n-grams; orders 3..6 do
    # not and are left out. sacrebleu averages P and R over those orders (P=1, R=7/12), then F-beta with beta 2:
    # 5 * P * R / (4 P + R) = (35/12) / (55/12) = 7/11.
    assert score("chrf", "ab", "abc") == pytest.approx(7 / 11, abs=1e-9)
    assert score("chrf", "le chat", "le chat") == pytest.approx(1.0)
    assert score("chrf", "xyz", "abc") == 0.0


def test_bleu_is_sentence_bleu_over_100():
    # 1..4-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): geometric mean.
    want = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert score("bleu", "the cat sat on the mat", "the cat sat on a mat") == pytest.approx(want, abs=1e-6)
    assert score("bleu", "the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)


def test_ocr_label_and_length_rewards():
    assert score("edit_similarity", "kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert score("exact_match", " abc ", "abc") == 1.0 and score("exact_match", "abc", "abd") == 0.0
    assert score("label_match", "Acceptable.", "acceptable") == 1.0
    assert score("label_match", "unacceptable", "acceptable") == 0.0
    assert score("length_penalty", "a b c", "a b c d") == pytest.approx(-0.25)
    assert score("length_penalty", " ".join("w" * 10), "a b") == -1.0


def test_reward_function_reads_the_reference_column_and_chat_completions():
    fn = RewardFunction(REWARDS.get("exact_match"))
    assert fn.__name__ == "exact_match"
    chats = [[{"role": "assistant", "content": "abc"}], [{"role": "assistant", "content": "x"}]]
    assert fn(prompts=["p", "p"], completions=chats, reference=["abc", "abc"], trainer_state=None) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="needs the prompt column 'reference'"):
        fn(prompts=["p"], completions=["abc"], label=["abc"])


def test_a_nan_reward_stops_with_its_name():
    fn = RewardFunction(Reward("toy_nan", lambda c, r: math.nan if c == "bad" else 1.0))
    assert fn(prompts=["p", "p"], completions=["ok", "ok"], reference=["r", "r"]) == [1.0, 1.0]
    with pytest.raises(RewardError, match=r"reward 'toy_nan' returned nan for completion 1"):
        fn(prompts=["p", "p"], completions=["ok", "bad"], reference=["r", "r"])


def test_reward_problems_did_you_mean_and_weights():
    (problem,) = reward_problems(["chrff"], None)
    assert "unknown reward 'chrff'" in problem and "did you mean 'chrf'?" in problem
    (problem,) = reward_problems(["chrf", "bleu"], [1.0])
    assert "1 weights for 2 rewards" in problem
    assert reward_problems(["chrf", "bleu"], [1.0, 0.5]) == []
