"""``rl=grpo`` bad input is refused by validate_config, before any model loads."""

from __future__ import annotations

import pytest

from farlab.config import REPO_ROOT
from farlab.errors import ConfigError
from farlab.validate import validate_config

TINY = ["task=europarl_en_fr", "model=tiny_llama", "rl=grpo", "train.batch_size=8"]


def refused(compose_cfg, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg([*TINY, *overrides]))
    return str(err.value)


def test_defaults_are_valid_and_rl_none_is_the_default(compose_cfg):
    validate_config(compose_cfg(TINY))
    assert compose_cfg(["task=europarl_en_fr"]).rl.name == "none"
    rl = compose_cfg(TINY).rl
    assert (rl.name, rl.num_generations, rl.beta, rl.reference, rl.init) == ("grpo", 4, 0.0, "init", "none")


def test_classification_head_model_is_refused(compose_cfg):
    msg = refused(compose_cfg, "model=tiny_bert")
    assert "needs a generative student" in msg and "tiny-bert-2l" in msg and "encoder/classification-head" in msg


def test_unknown_reward_and_method_did_you_mean(compose_cfg):
    msg = refused(compose_cfg, "rl.rewards=[chrf,bleuu]")
    assert "unknown reward 'bleuu'" in msg and "did you mean 'bleu'?" in msg
    assert "did you mean 'grpo'?" in refused(compose_cfg, "rl.name=grpoo")


def test_num_generations_must_divide_the_generation_batch(compose_cfg):
    msg = refused(compose_cfg, "rl.num_generations=3")
    assert "rl.num_generations=3 does not divide the generation batch" in msg and "8 x 1 = 8" in msg
    validate_config(compose_cfg([*TINY, "rl.num_generations=6", "train.batch_size=3", "train.grad_accum_steps=2"]))
    assert "must be >= 2" in refused(compose_cfg, "rl.num_generations=1")


def test_teacher_with_another_tokenizer_is_refused_for_the_teacher_reward(compose_cfg):
    other = str(REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece")
    msg = refused(compose_cfg, "rl.teacher_weight=0.5", f"model.teacher_tokenizer={other}")
    assert "rl.teacher_weight=0.5" in msg and "needs one tokenizer" in msg and other in msg
    validate_config(compose_cfg([*TINY, "rl.teacher_weight=0", f"model.teacher_tokenizer={other}"]))
    assert "rl.beta > 0" in refused(compose_cfg, "rl.reference=teacher")


def test_task_without_prompts_or_verbaliser_and_vision_teacher_reward_are_refused(compose_cfg):
    msg = refused(compose_cfg, "task=cola")
    assert "needs task.label_words" in msg and "task=cola_generative" in msg
    msg = refused(compose_cfg, "task=ocr_uw3_lines", "model=tiny_qwen_vl", "rl.teacher_weight=0.5")
    assert "text prompts only" in msg and "tiny_qwen_vl" in msg
    validate_config(compose_cfg([*TINY, "task=ocr_uw3_lines", "model=tiny_qwen_vl"]))


def test_teacher_reward_backends_cache_refused_server_accepted(compose_cfg):
    msg = refused(compose_cfg, "rl.teacher_weight=0.5", "teacher=cache")
    assert "rl.teacher_weight=0.5" in msg and "no cache can hold" in msg and "teacher=openai" in msg
    assert "rl.reference=init" in refused(compose_cfg, "rl.teacher_weight=0.5", "teacher=self")
    validate_config(compose_cfg([*TINY, "rl.teacher_weight=0.5", "teacher=openai", "teacher.top_k=8"]))
    validate_config(compose_cfg([*TINY, "rl.teacher_weight=0", "teacher=cache"]))  # no teacher in the run
    msg = refused(compose_cfg, "teacher=openai", "rl.reference=teacher", "rl.beta=0.1")
    assert "GRPO's reference model" in msg and "teacher=openai" in msg
    msg = refused(compose_cfg, "rl.teacher_weight=0.5", "rl.teacher_topk_tail=bukket")
    assert "rl.teacher_topk_tail" in msg and "bucket" in msg


def test_several_processes_are_refused_with_the_generation_batch_rule(compose_cfg, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    validate_config(compose_cfg(TINY))  # torchrun with one process: one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    msg = refused(compose_cfg)
    assert "rl=grpo runs in one process; this is one of 2" in msg and "torchrun" in msg
    assert "x processes x" in msg and "does not divide" not in msg  # 8 x 2 x 1 holds groups of 4
    msg = refused(compose_cfg, "rl.num_generations=16", "train.batch_size=4")
    assert "train.batch_size x processes x train.grad_accum_steps = 4 x 2 x 1 = 8" in msg
