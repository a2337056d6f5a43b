"""eval.harness end to end: a tiny Llama KD run on Europarl scores lm-eval tasks before and after training, writes
them to metrics.json, and the collector turns them into columns. Bad harness settings fail before training."""

from __future__ import annotations

import json

import pytest

from farlab.collect.runs import load_job
from farlab.errors import ConfigError
from farlab.train import execute, run
from tests.conftest import tiny_overrides

TASKS = ["farlab_europarl_mc", "farlab_europarl_fr_ppl"]


def _overrides(store, **extra):
    base = {
        "task": "europarl_en_fr",
        "model": "tiny_llama",
        "loss": "response_kl",
        "teacher_strategy": "frozen_base",
        "task.train_limit": 32,
        "task.eval_limit": 4,
        "task.generation.max_new_tokens": 4,
        "task.max_length": 96,
        "train.max_steps": 2,
        "train.save_steps": 2,
        "train.learning_rate": 0.01,
        "eval.harness.tasks": "[" + ",".join(TASKS) + "]",
        "eval.harness.limit": 6,
    }
    base.update(extra)
    return tiny_overrides(store, **base)


def test_harness_scores_student_and_teacher_into_metrics_and_collector(compose_cfg, tmp_path, store_dir):
    overrides = _overrides(store_dir)
    run_dir = tmp_path / "run"
    execute(compose_cfg(overrides), run_dir, overrides)
    harness = json.loads((run_dir / "metrics.json").read_text())["harness"]

    assert set(harness["pre"]) == {"student", "teacher"}  # the frozen in-process teacher is a causal LM
    assert set(harness["post"]) == {"student"}  # frozen: not scored again
    assert "teacher_post" in harness["notes"]
    assert harness["tasks"] == TASKS and harness["limit"] == 6
    for phase, role in (("pre", "student"), ("pre", "teacher"), ("post", "student")):
        mc, ppl = harness[phase][role]["farlab_europarl_mc"], harness[phase][role]["farlab_europarl_fr_ppl"]
        assert mc["n"] == 6 and ppl["n"] == 6
        assert mc["acc"] in {k / 6 for k in range(7)} and 0.0 <= mc["acc_norm"] <= 1.0
        assert ppl["bits_per_byte"] > 0 and ppl["byte_perplexity"] == pytest.approx(2 ** ppl["bits_per_byte"])
    # Two steps at lr 0.01 change the student: its perplexity moves (any direction), the teacher's pre one differs.
    assert harness["pre"]["student"]["farlab_europarl_fr_ppl"] != harness["post"]["student"]["farlab_europarl_fr_ppl"]

    record = load_job(run_dir, "run")
    col = record.metrics
    assert col["harness_farlab_europarl_mc_post_student_acc"] == harness["post"]["student"]["farlab_europarl_mc"]["acc"]
    assert col["harness_farlab_europarl_fr_ppl_pre_teacher_bits_per_byte"] == (
        harness["pre"]["teacher"]["farlab_europarl_fr_ppl"]["bits_per_byte"])


def test_unknown_harness_task_fails_before_training(compose_cfg, tmp_path, store_dir):
    cfg = compose_cfg(_overrides(store_dir, **{"eval.harness.tasks": "[farlab_europarl_mcq]"}))
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "bad")
    msg = str(err.value)
    assert "farlab_europarl_mcq" in msg and "farlab_europarl_mc" in msg and "farlab_europarl_fr_ppl" in msg
    assert "did you mean 'farlab_europarl_mc'" in msg
    assert not (tmp_path / "bad").exists()


def test_lm_eval_builtin_task_offline_says_how_to_enable_it(compose_cfg, tmp_path, store_dir):
    cfg = compose_cfg(_overrides(store_dir, **{"eval.harness.tasks": "[hellaswag]"}))
    with pytest.raises(ConfigError, match="include_defaults=true"):
        run(cfg, tmp_path / "bad")


def test_harness_on_a_classifier_is_refused_before_models_load(compose_cfg, tmp_path, store_dir):
    cfg = compose_cfg(tiny_overrides(store_dir, **{"eval.harness.tasks": "[farlab_europarl_mc]"}))  # CoLA, BERT
    with pytest.raises(ConfigError, match="needs a causal language model.*'classification'"):
        run(cfg, tmp_path / "cls")
    assert not store_dir.exists()  # no SFT teacher was trained
