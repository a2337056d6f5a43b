"""Tiny decoder-only runs on the real Europarl data: SFT, KD, LoRA with a merged final model."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from farlab.train import execute
from tests.conftest import tiny_overrides


def _overrides(store, **extra):
    base = {
        "task": "europarl_en_fr",
        "model": "tiny_llama",
        "task.train_limit": 48,
        "task.eval_limit": 6,
        "task.generation.max_new_tokens": 6,
        "task.max_length": 96,
    }
    base.update(extra)
    return tiny_overrides(store, **base)


def test_translation_sft_and_kd_report_bleu_and_chrf(compose_cfg, tmp_path, store_dir):
    for loss in ("ce", "response_kl"):
        overrides = _overrides(store_dir, loss=loss, teacher_strategy="frozen_sft")
        metrics = execute(compose_cfg(overrides), tmp_path / loss, overrides)
        assert set(metrics["post"]["student"]) == {"bleu", "chrf", "perplexity"}
        assert metrics["primary_metric"] == "bleu" and metrics["eval_split"] == "validation"
        assert ("teacher" in metrics["pre"]) == (loss != "ce")
        on_disk = json.loads((tmp_path / loss / "metrics.json").read_text())
        assert on_disk["post"] == metrics["post"]
    assert {"response/raw", "response/weighted"} <= set(metrics["loss_components"])


def test_lora_student_exports_a_merged_plain_model(compose_cfg, tmp_path, store_dir):
    overrides = _overrides(
        store_dir,
        loss="combined_fr",
        teacher_strategy="frozen_base",
        **{"model.student.lora.r": 4, "model.student.lora.alpha": 8, "train.learning_rate": 0.01},
    )
    execute(compose_cfg(overrides), tmp_path / "lora", overrides)
    ckpt = tmp_path / "lora" / "checkpoint-4"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "COMPLETE").is_file()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "final")
    assert type(final) is LlamaForCausalLM  # merged: no PEFT wrapper, no lora_ weights
    assert not any("lora_" in name for name in final.state_dict())
    # The adapters learned something that the merge folded into the base weights.
    fresh = compose_cfg(overrides)
    from transformers import set_seed

    from farlab.models.loading import Head, build_model

    set_seed(fresh.seed)
    base = build_model(fresh.model.student, Head(AutoModelForCausalLM), None)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q_name], final.state_dict()[q_name])
