"""Backend wiring: the default hf backend is bitwise the old direct teacher call; config checks refuse the
combinations a backend cannot serve, before any model loads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, set_seed

from farlab.errors import ConfigError
from farlab.losses.base import DistillBatch
from farlab.losses.objective import build_objective
from farlab.models.forward import accepted_inputs
from farlab.models.forward import output_view as _view
from farlab.models.loading import Head, build_model, model_shape
from farlab.trainer.pair import DistillationModule
from farlab.validate import validate_config
from tests.conftest import tiny_overrides


def test_default_hf_backend_is_bitwise_the_direct_teacher_call(compose_cfg, store_dir):
    cfg = compose_cfg(tiny_overrides(store_dir, loss="combined_far"))
    head = Head(AutoModelForSequenceClassification, {"num_labels": 2})
    set_seed(0)
    teacher, student = (build_model(cfg.model[r], head, "eager") for r in ("teacher", "student"))
    objective = build_objective(cfg.loss, cfg.layer_map, cfg.projection, model_shape(student), model_shape(teacher))
    pair = DistillationModule(student, teacher, objective)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 1999, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "token_type_ids": torch.zeros(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0]),
             "example_id": torch.arange(4)}
    set_seed(1)  # same dropout draws in both forwards
    total, parts = pair(**batch)

    # The pre-backend forward, verbatim (minus example_id, which models never see).
    inputs = {k: v for k, v in batch.items() if k != "example_id"}
    flags = {"output_hidden_states": True, "output_attentions": True}
    set_seed(1)
    s_out = student(**accepted_inputs(student, inputs), **flags)
    with torch.no_grad():
        t_out = teacher(**accepted_inputs(teacher, inputs), **flags)
    want, want_parts = objective(DistillBatch(_view(s_out), _view(t_out, detach=True), inputs["attention_mask"]),
                                 s_out.loss)
    assert torch.equal(total, want) and parts == want_parts
    assert pair.teacher_forwards == 1 and pair.batches_seen == 1


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({"teacher.backend": "vllm"}, r"unknown teacher.backend 'vllm'.*cache, hf, openai"),
        ({"teacher": "openai", "loss": "combined_fr"}, r"feature losses need the teacher's hidden states"),
        ({"teacher": "openai", "loss": "attention_kl"}, r"attention losses need the teacher's attention maps"),
        ({"teacher": "cache", "loss": "attention_kl"}, r"cache stores .* not attention maps"),
        ({"teacher": "cache", "loss": "feature_mse"}, r"teacher.cache.hidden_states=true"),
        ({"teacher": "cache", "teacher_strategy": "cotrain_base"}, r"co-trains the teacher.*stale"),
        ({"teacher.top_k": 5, "loss": "response_mse"}, r"fn=mse compares raw logits"),
        ({"teacher.top_k": 0}, r"teacher.top_k=0 must be >= 1"),
        ({"teacher.cache.dtype": "int8", "teacher": "cache"}, r"unknown teacher.cache.dtype 'int8'"),
        ({"teacher.openai.base_url": "localhost:8000", "teacher": "openai"}, r"must start with http"),
        ({"model.vocab_align": "crop"}, r"unknown model.vocab_align 'crop'.*truncate"),
    ],
)
def test_backend_combinations_a_backend_cannot_serve_are_refused(compose_cfg, store_dir, extra, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_config(compose_cfg(tiny_overrides(store_dir, **extra)))


def test_valid_backend_configs_pass(compose_cfg, store_dir):
    for extra in ({"teacher": "cache", "loss": "combined_fr", "teacher.cache.hidden_states": True},
                  {"teacher": "openai"}, {"teacher.top_k": 20, "loss": "combined_far"}):
        validate_config(compose_cfg(tiny_overrides(store_dir, **extra)))
