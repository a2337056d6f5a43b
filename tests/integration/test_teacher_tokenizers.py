"""Tokenizer and vocabulary checks in real runs: a different teacher tokenizer is refused before models load,
differing logit widths are refused by default and reconciled by model.vocab_align, a short student is resized."""

from __future__ import annotations

import logging
import math

import pytest
from transformers import AutoModelForCausalLM

from farlab.config import REPO_ROOT, ConfigError
from farlab.models.loading import Head, build_model, fit_student_vocab, load_tokenizer
from farlab.train import execute
from tests.conftest import tiny_overrides


def _overrides(store, **extra):
    base = {
        "task": "europarl_en_fr", "model": "tiny_llama", "teacher_strategy": "frozen_base",
        "task.train_limit": 24, "task.eval_limit": 4, "task.generation.max_new_tokens": 4, "task.max_length": 64,
        "train.max_steps": 2, "train.save_steps": 2,
    }
    base.update(extra)
    return tiny_overrides(store, **base)


def test_a_teacher_with_another_tokenizer_is_refused_for_response_losses(compose_cfg, tmp_path, store_dir, monkeypatch):
    monkeypatch.setattr("farlab.models.loading.build_model",
                        lambda *a, **k: pytest.fail("refused before any model loads"))
    wordpiece = REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece"
    overrides = _overrides(store_dir, **{"model.teacher_tokenizer": str(wordpiece)})
    with pytest.raises(ConfigError, match=r"differs from the student.s.*shared tokenizer.*feature-only losses"):
        execute(compose_cfg(overrides), tmp_path / "mismatch", overrides)


def test_vocab_align_error_refuses_then_truncate_and_pad_train(compose_cfg, tmp_path, store_dir):
    wider = {"model.student.config.vocab_size": 1088}  # padded embedding rows: same tokenizer, wider logits
    refused = _overrides(store_dir, **wider)
    with pytest.raises(ConfigError, match=r"1088 entries but the teacher's have 1024.*vocab_align=truncate or pad"):
        execute(compose_cfg(refused), tmp_path / "error", refused)
    for mode in ("truncate", "pad"):
        overrides = _overrides(store_dir, **wider, **{"model.vocab_align": mode})
        metrics = execute(compose_cfg(overrides), tmp_path / mode, overrides)
        raw = metrics["loss_components"]["response/raw"]
        assert math.isfinite(raw) and raw > 0, mode


def test_a_student_smaller_than_its_tokenizer_is_resized(compose_cfg, store_dir, caplog):
    cfg = compose_cfg(_overrides(store_dir, **{"model.student.config.vocab_size": 1000}))
    student = build_model(cfg.model.student, Head(AutoModelForCausalLM), None)
    caplog.set_level(logging.INFO, logger="farlab.models.loading")
    fit_student_vocab(student, load_tokenizer(cfg.model.tokenizer))
    assert student.get_input_embeddings().num_embeddings == 1024
    assert student.get_output_embeddings().weight.shape[0] == 1024
    assert "resized the student's embeddings 1000 -> 1024 rows" in caplog.text
