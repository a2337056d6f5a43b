"""Bring-your-own-data families end to end: tiny models trained on the sample files under tests/data."""

from __future__ import annotations

import json
import math

from transformers import AutoConfig

from farlab.collect.runs import load_job
from farlab.train import execute
from tests.conftest import tiny_overrides


def _run(compose_cfg, tmp_path, store_dir, name, **extra):
    overrides = tiny_overrides(store_dir, **extra)
    metrics = execute(compose_cfg(overrides), tmp_path / name, overrides)
    on_disk = json.loads((tmp_path / name / "metrics.json").read_text())
    assert on_disk["post"] == metrics["post"] and on_disk["task"] == metrics["task"]
    run = load_job(tmp_path / name, name)  # the results collector reads the run like a built-in task's
    assert run.metrics["primary_metric"] == metrics["primary_metric"]
    return metrics, run


def test_instruction_kd_reports_perplexity_and_generation_metrics(compose_cfg, tmp_path, store_dir):
    metrics, run = _run(
        compose_cfg, tmp_path, store_dir, "instruction",
        task="my_instructions", model="tiny_llama", loss="response_kl", teacher_strategy="frozen_base",
        **{"task.train_limit": 32, "task.eval_limit": 6, "task.max_length": 96,
           "task.metrics": "[perplexity,nll,chrf,rougeL,exact_match]", "task.generation.max_new_tokens": 4},
    )
    post = metrics["post"]["student"]
    assert set(post) == {"perplexity", "nll", "chrf", "rougeL", "exact_match"}
    assert math.isclose(post["perplexity"], math.exp(post["nll"]), rel_tol=1e-9)
    assert post["perplexity"] < metrics["pre"]["student"]["perplexity"]  # 4 steps on a random tiny model help
    gap = metrics["transfer_gap"]
    assert gap["metric"] == "perplexity"  # lower is better: gain = pre - post > 0
    assert math.isclose(gap["student_gain"], metrics["pre"]["student"]["perplexity"] - post["perplexity"])
    assert run.metrics["post_student_perplexity"] == post["perplexity"]


def test_text_ce_run(compose_cfg, tmp_path, store_dir):
    metrics, _ = _run(compose_cfg, tmp_path, store_dir, "text", task="my_text", model="tiny_llama", loss="ce",
                      **{"task.block_size": 64, "task.train_limit": 32, "task.eval_limit": 8})
    assert metrics["eval_split"] == "train[25% seeded split]"
    assert set(metrics["post"]["student"]) == {"perplexity", "nll"}
    assert "teacher" not in metrics["pre"]


def test_text_classification_kd_stores_label_names(compose_cfg, tmp_path, store_dir):
    metrics, _ = _run(compose_cfg, tmp_path, store_dir, "cls", task="my_classification", model="tiny_bert",
                      loss="response_kl", teacher_strategy="frozen_base",
                      **{"task.train_limit": 64, "task.eval_limit": 48})
    assert {"mcc", "accuracy", "ece"} <= set(metrics["post"]["student"])
    assert metrics["eval_split"] == "cola_dev.csv"
    config = AutoConfig.from_pretrained(tmp_path / "cls" / "final")
    assert config.id2label == {0: "unacceptable", 1: "acceptable"}
    assert config.label2id == {"unacceptable": 0, "acceptable": 1}
