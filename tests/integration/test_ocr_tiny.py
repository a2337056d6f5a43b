"""Tiny vision-language runs on the shipped UW3 lines: SFT, KD with every loss family, a reloadable final/."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen3VLForConditionalGeneration

from farlab.data import build_task_data
from farlab.models.vision import load_processor
from farlab.train import execute
from tests.conftest import tiny_overrides

METRICS = {"edit_similarity", "exact_match"}


def _overrides(store, **extra):
    base = {
        "task": "ocr_uw3_lines",
        "model": "tiny_qwen_vl",
        "task.max_image_side": 128,
        "task.train_limit": 16,
        "task.eval_limit": 4,
        "task.generation.max_new_tokens": 6,
        "train.batch_size": 4,
        "train.eval_batch_size": 4,
    }
    base.update(extra)
    return tiny_overrides(store, **base)


def test_ocr_sft_and_kd_report_edit_similarity_and_exact_match(compose_cfg, tmp_path, store_dir):
    for loss in ("ce", "combined_far"):
        overrides = _overrides(store_dir, loss=loss, teacher_strategy="frozen_base")
        metrics = execute(compose_cfg(overrides), tmp_path / loss, overrides)
        assert metrics["primary_metric"] == "edit_similarity" and metrics["eval_split"] == "test"
        assert set(metrics["post"]["student"]) == METRICS and set(metrics["pre"]["student"]) == METRICS
        assert ("teacher" in metrics["pre"]) == (loss != "ce")
        on_disk = json.loads((tmp_path / loss / "metrics.json").read_text())
        assert on_disk["pre"] == metrics["pre"] and on_disk["post"] == metrics["post"]
    # Feature and attention terms ran on the VLM's language-model hidden states and eager attention maps.
    assert {"response/raw", "feature/raw", "attention/raw"} <= set(metrics["loss_components"])
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics["loss_components"].values())


def test_lora_student_final_reloads_with_its_processor(compose_cfg, tmp_path, store_dir):
    overrides = _overrides(
        store_dir,
        loss="response_kl",
        teacher_strategy="frozen_sft",
        **{"model.student.lora.r": 4, "model.student.lora.alpha": 8, "train.learning_rate": 0.01},
    )
    cfg = compose_cfg(overrides)
    execute(cfg, tmp_path / "lora", overrides)
    final = tmp_path / "lora" / "final"
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert type(model) is Qwen3VLForConditionalGeneration  # merged: no PEFT wrapper, no lora_ weights
    assert not any("lora_" in name for name in model.state_dict())
    processor = load_processor(final)
    data = build_task_data(cfg.task, processor, cfg.seed)
    batch = data.prompt_collator([data.eval[0]])
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert out.shape[1] > batch["input_ids"].shape[1]


@pytest.mark.slow
def test_sroie_key_extraction_runs_end_to_end(compose_cfg, tmp_path, store_dir):
    overrides = _overrides(
        store_dir,
        task="ocr_sroie_receipts",
        loss="combined_fr",
        teacher_strategy="frozen_base",
        **{"task.format": "sroie_keys", "task.max_image_side": 160, "task.train_limit": 8},
    )
    metrics = execute(compose_cfg(overrides), tmp_path / "sroie", overrides)
    assert set(metrics["post"]["student"]) == METRICS
