"""teacher=self: the student with its LoRA adapters disabled is the teacher; one model in memory."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from farlab.config import REPO_ROOT, LoraSpec
from farlab.data import build_task_data
from farlab.errors import ConfigError
from farlab.losses.objective import ModelShape, build_objective
from farlab.losses.plan import LossPlan
from farlab.models.loading import Head, build_model
from farlab.models.lora import apply_lora
from farlab.teachers.backends import TEACHER_BACKENDS
from farlab.teachers.backends.self_teacher import SelfBackend
from farlab.trainer.pair import DistillationModule
from farlab.validate import validate_config
from tests.conftest import SHARED_DATA, load_group, tiny_overrides

TOKENIZER = AutoTokenizer.from_pretrained(REPO_ROOT / "farlab" / "assets" / "tiny_bpe_enfr")
EUROPARL = SHARED_DATA / "europarl_en_fr"
FLAGS = {"hidden_states": True, "attentions": False, "grad": False, "detach": True}


def _batch():
    task = OmegaConf.create({
        "name": "europarl_en_fr", "family": "translation", "train_limit": 4, "eval_limit": 2, "max_length": 64,
        "source_file": str(EUROPARL / "europarl-v7.fr-en.first3000.en"),
        "target_file": str(EUROPARL / "europarl-v7.fr-en.first3000.fr")})
    data = build_task_data(task, TOKENIZER, seed=0)
    return data.collator([data.train[i] for i in range(4)])


def _lora_student(**lora):
    set_seed(0)
    base = build_model(load_group("model", "tiny_llama").student, Head(AutoModelForCausalLM), None)
    reference = copy.deepcopy(base)  # the base weights, as a separate model, only to compare against
    student = apply_lora(base, OmegaConf.structured(LoraSpec(r=4, alpha=8, dropout=0.1, **lora)), "causal_lm")
    with torch.no_grad():  # move the adapters away from their zero init, so the student differs from its base
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return student, reference.eval()


@pytest.mark.parametrize("chunk", [None, 4])
def test_teacher_outputs_equal_the_base_model_and_differ_from_the_student(chunk):
    student, base = _lora_student()
    batch = _batch()
    backend = SelfBackend(student, chunk_size=chunk)
    student.train()
    out = backend(batch, **FLAGS)
    logits = out.view.logits if chunk is None else out.view.lm_head(out.view.final_hidden)
    with torch.no_grad():
        expected = base(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, expected.logits)  # eval mode: LoRA dropout and adapters off
    torch.testing.assert_close(out.view.hidden_states[-1], expected.hidden_states[-1])
    assert not torch.allclose(student_logits, expected.logits, atol=1e-3)  # the adapters are on again after
    assert student.training and all(m.training for m in student.modules())  # its train mode is restored
    assert not logits.requires_grad and out.loss is None


def test_a_head_with_an_adapter_gives_logits_not_the_chunked_head():
    student, base = _lora_student(target_modules=["q_proj", "lm_head"])
    backend = SelfBackend(student, chunk_size=4)
    out = backend(_batch(), **FLAGS)
    assert out.view.logits is not None and out.view.final_hidden is None
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(out.view.logits, base(input_ids=batch["input_ids"],
                                                         attention_mask=batch["attention_mask"]).logits)


def test_memory_holds_one_model():
    student, _ = _lora_student()
    loss = load_group("loss", "response_kl")
    shape = ModelShape.from_hf_config(student.config)
    objective = build_objective(LossPlan.from_config(loss), load_group("layer_map", "uniform"),
                                load_group("projection", "linear"), shape, shape)
    prepared_backend = SelfBackend(student)
    pair = DistillationModule(student, None, objective, kind="causal_lm", backend=prepared_backend)
    assert pair.teacher is None and prepared_backend.inner.teacher is student
    pair_params = {p.data_ptr() for p in pair.parameters()}
    assert pair_params == {p.data_ptr() for p in student.parameters()}  # nothing but the student's tensors
    n_models = sum(isinstance(m, type(student.get_base_model())) for m in pair.modules())
    assert n_models == 1
    total, parts = pair(**_batch())
    assert parts["response/raw"] > 0 and total.requires_grad  # the adapters moved: student != base
    total.backward()
    assert all(p.grad is None for n, p in student.named_parameters() if "lora_" not in n)  # base stays frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in student.named_parameters() if "lora_" in n)


def test_self_backend_is_registered_and_serves_dense_logits():
    kind = TEACHER_BACKENDS.get("self")
    assert kind.dense and not kind.in_process  # no teacher is built before the student


def _cfg(compose_cfg, tmp_path, **extra):
    base = {"task": "europarl_en_fr", "model": "tiny_llama", "teacher": "self", "teacher_strategy": "frozen_base",
            "model.student.lora.r": 4}
    return compose_cfg(tiny_overrides(tmp_path / "store", **{**base, **extra}))


def test_teacher_self_implies_adapters_and_the_frozen_base_strategy(compose_cfg):
    cfg = compose_cfg(["teacher=self"])
    assert cfg.teacher.backend == "self" and cfg.teacher_strategy.name == "frozen_base"
    assert cfg.model.student.lora.r == 8
    assert compose_cfg(["teacher=self", "model.student.lora.r=2"]).model.student.lora.r == 2


def test_validation_needs_lora_adapters_and_the_frozen_base_strategy(compose_cfg, tmp_path):
    validate_config(_cfg(compose_cfg, tmp_path))
    validate_config(_cfg(compose_cfg, tmp_path, loss="response_mse"))  # dense logits: full-logit fns are fine
    with pytest.raises(ConfigError, match=r"model.student.lora.r=0, set it > 0"):
        validate_config(_cfg(compose_cfg, tmp_path, **{"model.student.lora.r": 0}))
    with pytest.raises(ConfigError, match="teacher_strategy=frozen_sft .* use teacher_strategy=frozen_base"):
        validate_config(_cfg(compose_cfg, tmp_path, teacher_strategy="frozen_sft"))
    with pytest.raises(ConfigError, match="teacher_strategy=cotrain_base"):
        validate_config(_cfg(compose_cfg, tmp_path, teacher_strategy="cotrain_base"))
