"""The teacher reward is minus the reverse KL of farlab's divergence module on the student's sampled tokens
(summed over the completion's tokens, or their mean), analytic or as the sampled-token estimate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import GRPOTrainer

from farlab.config import REPO_ROOT
from farlab.losses.divergences import divergence
from farlab.rl.teacher import MONITOR_KEY, TeacherReward, prompt_token_ids


def tiny(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def reference_kl(student, teacher, prompt: list[int], completion: list[int]) -> float:
    """One unpadded sequence, float64 log-softmax by hand: sum over completion tokens of KL(p_s || p_t)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        ls = torch.log_softmax(student(input_ids=ids).logits[0].double(), -1)
        lt = torch.log_softmax(teacher(input_ids=ids).logits[0].double(), -1)
    rows = range(len(prompt) - 1, len(prompt) + len(completion) - 1)  # the logits predicting completion tokens
    return sum(float((ls[t].exp() * (ls[t] - lt[t])).sum()) for t in rows)


def test_teacher_reward_equals_minus_reverse_kl_on_the_same_tokens():
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    student, teacher = tiny(2, 0), tiny(3, 1)
    prompts = ["Translate English to French.\nEnglish: Hello\nFrench:", "Translate: a much longer prompt here"]
    completions = [[17, 300, 41], [5, 6, 7, 8, 9, 2]]  # different lengths: padding must not leak in
    reward = TeacherReward(teacher, tokenizer, "sum", estimator="analytic").bind(student)
    got = reward(prompts=prompts, completions=["", ""], completion_ids=completions, reference=["x", "y"])
    ids = prompt_token_ids(tokenizer, prompts)
    for value, p, c in zip(got, ids, completions, strict=True):
        assert value < 0
        assert abs(value + reference_kl(student, teacher, p, c)) < 1e-4
        seq = torch.tensor([p + c])
        with torch.no_grad():
            per_position = divergence("reverse_kl", student(input_ids=seq).logits, teacher(input_ids=seq).logits)[0]
        assert abs(value + float(per_position[len(p) - 1 : len(p) + len(c) - 1].sum())) < 1e-5
    assert reward(prompts=prompts[:1], completions=[""], completion_ids=completions[:1])[0] == got[0]
    mean = TeacherReward(teacher, tokenizer, "mean", estimator="analytic").bind(student)(prompts=prompts, completions=["", ""],
                                                                   completion_ids=completions)
    assert mean == pytest.approx([g / len(c) for g, c in zip(got, completions, strict=True)], rel=1e-5)


def test_prompt_ids_match_trl_tokenization_of_text_prompts():
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    prompts = ["Translate English to French.\nEnglish: Hello\nFrench:", "two"]
    trl_ids, _, _ = GRPOTrainer._tokenize_prompts(SimpleNamespace(processing_class=tokenizer), prompts)
    assert prompt_token_ids(tokenizer, prompts) == [list(x) for x in trl_ids]


def test_sampled_estimate_is_the_log_ratio_of_the_completion_and_the_monitor_logs_the_analytic_kl():
    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
    student, teacher = tiny(2, 0), tiny(3, 1)
    prompts = ["Translate English to French.\nEnglish: Hello\nFrench:", "Translate: a much longer prompt here"]
    completions = [[17, 300, 41], [5, 6, 7, 8, 9, 2]]
    logged: list[tuple[str, float]] = []
    reward = TeacherReward(teacher, tokenizer, "sum").bind(student, monitor=lambda k, v: logged.append((k, v)))
    assert reward.estimator == "sampled"  # the default
    got = reward(prompts=prompts, completions=["", ""], completion_ids=completions)
    analytic_means = []
    for value, p, c in zip(got, prompt_token_ids(tokenizer, prompts), completions, strict=True):
        seq = torch.tensor([p + c])
        with torch.no_grad():
            ls = torch.log_softmax(student(input_ids=seq).logits[0].double(), -1)
            lt = torch.log_softmax(teacher(input_ids=seq).logits[0].double(), -1)
        # log p_s(c | p) - log p_t(c | p), token by token
        log_ratio = sum(float(ls[len(p) - 1 + j, tok] - lt[len(p) - 1 + j, tok]) for j, tok in enumerate(c))
        assert abs(value + log_ratio) < 1e-4
        analytic_means.append(reference_kl(student, teacher, p, c) / len(c))
    assert len(logged) == 1 and logged[0][0] == MONITOR_KEY
    assert logged[0][1] == pytest.approx(sum(analytic_means) / 2, rel=1e-4)
