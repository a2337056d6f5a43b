"""A student pruned from the teacher (auto blocks + narrower width) trains with a feature loss and saves."""

from __future__ import annotations

import json

from transformers import AutoModelForSequenceClassification

from farlab.train import execute
from tests.conftest import tiny_overrides


def test_auto_blocks_and_width_pruned_student_trains_and_saves(compose_cfg, tmp_path, store_dir):
    overrides = tiny_overrides(store_dir, loss="combined_f", teacher_strategy="frozen_base", **{
        "model.student.source": "from_teacher", "model.student.config": "null",
        "model.student.init_blocks": "auto:2", "model.student.width.hidden_size": 32,
        "model.student.width.intermediate_size": 64, "model.student.importance_examples": 24})
    metrics = execute(compose_cfg(overrides), tmp_path / "run", overrides)
    init = json.loads((tmp_path / "run" / "metrics.json").read_text())["student_init"]
    assert init == metrics["student_init"]
    scores, chosen = init["blocks"]["importance"], init["blocks"]["chosen"]
    assert len(scores) == 4 and init["blocks"]["examples"] == 24
    assert chosen == sorted(sorted(range(1, 5), key=lambda b: -scores[b - 1])[:2])
    assert init["width"]["student"] == {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                        "num_key_value_heads": 2}
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert (final.config.num_hidden_layers, final.config.hidden_size) == (2, 32)
    assert final.config.farlab_pruning["blocks"]["chosen"] == chosen
    assert metrics["loss_components"]["feature/raw"] > 0  # the projection maps width 32 to the teacher's 64
