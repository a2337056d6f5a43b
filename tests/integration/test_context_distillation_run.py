"""Tiny end-to-end runs on Europarl: the teacher sees a context the student never sees, and the response KL falls;
the same with the student itself (adapters off) as the teacher."""

from __future__ import annotations

import json

from farlab.train import execute
from tests.conftest import tiny_overrides

CONTEXT = "You translate European Parliament debates into formal French."
STEPS = 8


def _run(compose_cfg, tmp_path, store_dir, name, **extra):
    base = {
        "task": "europarl_en_fr", "model": "tiny_llama", "loss": "response_kl", "teacher_strategy": "frozen_base",
        "task.train_limit": 32, "task.eval_limit": 2, "task.generation.max_new_tokens": 2, "task.max_length": 64,
        "train.max_steps": STEPS, "train.save_steps": STEPS, "train.logging_steps": 1, "train.learning_rate": 0.01,
        "train.warmup_ratio": 0.0, "loss.ce_weight": 0.0, "loss.alpha": 1.0, "distill.context": f"'{CONTEXT}'",
    }
    overrides = tiny_overrides(store_dir, **{**base, **extra})
    metrics = execute(compose_cfg(overrides), tmp_path / name, overrides)
    state = json.loads((tmp_path / name / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    kl = [e["loss/response/raw"] for e in state["log_history"] if "loss/response/raw" in e]
    return metrics, kl


def _falls(kl: list[float]) -> bool:
    return len(kl) == STEPS and sum(kl[-3:]) / 3 < 0.7 * sum(kl[:3]) / 3


def test_kl_on_response_positions_falls_when_only_the_teacher_sees_the_context(compose_cfg, tmp_path, store_dir):
    metrics, kl = _run(compose_cfg, tmp_path, store_dir, "hf")
    assert _falls(kl), kl
    split = metrics["extra_eval"]["validation_with_context"]  # the eval prompts as the teacher sees them
    assert set(split["pre"]) == {"student", "teacher"} and set(split["post"]["student"]) == {"bleu", "chrf", "perplexity"}
    config = (tmp_path / "hf" / "config.yaml").read_text()
    assert CONTEXT in config  # recorded with the run


def test_self_teacher_bakes_the_context_into_the_adapters(compose_cfg, tmp_path, store_dir):
    metrics, kl = _run(compose_cfg, tmp_path, store_dir, "self", teacher="self",
                       **{"model.student.lora.r": 8, "model.student.lora.alpha": 16})
    assert kl[0] > 0 and _falls(kl), kl  # base + context vs base without it: > 0 from step 1
    assert "teacher" not in metrics["pre"]  # no teacher model exists in the run
    assert metrics["train"]["teacher_forwards_per_step"] == 1.0
