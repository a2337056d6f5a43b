"""On-policy GKD on tiny decoder-only runs: lambda 0 and 1 run end to end and log the on-policy fraction."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, set_seed

from farlab.config import ConfigError
from farlab.losses.gkd import OnPolicySampler
from farlab.train import execute
from tests.conftest import tiny_overrides


def _overrides(store, **extra):
    base = {
        "task": "europarl_en_fr", "model": "tiny_llama", "loss": "gkd", "teacher_strategy": "frozen_base",
        "task.train_limit": 32, "task.eval_limit": 4, "task.generation.max_new_tokens": 4, "task.max_length": 64,
        "loss.gkd.max_new_tokens": 6, "train.logging_steps": 1,
    }
    base.update(extra)
    return tiny_overrides(store, **base)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_gkd_runs_and_logs_the_on_policy_fraction(compose_cfg, tmp_path, store_dir, lam):
    overrides = _overrides(store_dir, **{"loss.gkd.lambda_": lam})
    metrics = execute(compose_cfg(overrides), tmp_path / "gkd", overrides)
    assert metrics["train"]["on_policy_fraction"] == lam
    assert metrics["train"]["teacher_forwards_per_step"] == 1.0
    history = json.loads((tmp_path / "gkd" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    logged = [e["on_policy_fraction"] for e in history if "on_policy_fraction" in e]
    assert logged == [lam] * 4  # every logging step
    parts = metrics["loss_components"]
    assert parts["response/raw"] > 0 and parts["response/weight"] == 1.0
    assert (parts["ce"] == 0.0) == (lam == 1.0)  # CE is zeroed on the student's own samples


def test_on_policy_batches_are_prompt_plus_the_students_sample(compose_cfg, store_dir):
    cfg = compose_cfg(_overrides(store_dir))
    from farlab.models.loading import Head, build_model

    set_seed(0)
    student = build_model(cfg.model.student, Head(AutoModelForCausalLM), None)
    sampler = OnPolicySampler(1.0, 1.0, max_new_tokens=5, pad_token_id=0, eos_token_id=2, seed=0)
    batch = {
        "input_ids": torch.tensor([[1, 10, 11, 12, 20, 21, 2], [1, 13, 30, 2, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]]),
        "labels": torch.tensor([[-100, -100, -100, -100, 20, 21, 2], [-100, -100, 30, 2, -100, -100, -100]]),
    }
    student.train()
    out = sampler.sample(student, batch)
    assert student.training  # restored after generation
    for b, prompt in enumerate(([1, 10, 11, 12], [1, 13])):
        n = int(out["attention_mask"][b].sum())
        assert out["input_ids"][b, : len(prompt)].tolist() == prompt
        assert out["labels"][b, : len(prompt)].tolist() == [-100] * len(prompt)
        completion = out["labels"][b, len(prompt) : n].tolist()
        assert 1 <= len(completion) <= 5 and completion == out["input_ids"][b, len(prompt) : n].tolist()
        assert 2 not in completion[:-1]  # cut after the first EOS
        assert out["labels"][b, n:].eq(-100).all()
    # Draws are a function of (seed, step, micro-batch): a resumed run makes the same choices.
    half = OnPolicySampler(0.5, 1.0, 5, 0, 2, seed=3)
    draws = [half.use(step) for step in range(400)]
    again = OnPolicySampler(0.5, 1.0, 5, 0, 2, seed=3)
    assert draws == [again.use(step) for step in range(400)] and 0.4 < sum(draws) / 400 < 0.6


def test_gkd_is_refused_where_it_cannot_work(compose_cfg, store_dir):
    from farlab.validate import validate_config

    with pytest.raises(ConfigError, match="lambda_=1.5 must be in"):
        validate_config(compose_cfg(_overrides(store_dir, **{"loss.gkd.lambda_": 1.5})))
    with pytest.raises(ConfigError, match="no cache holds"):
        validate_config(compose_cfg(_overrides(store_dir, **{"teacher": "cache"})))
