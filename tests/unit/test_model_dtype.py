"""Per-side dtypes: ``model.teacher.dtype`` / ``model.student.dtype`` reach every way a model is built, the SFT
store and the teacher cache keys, and a bad value is refused with the valid names."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from farlab.data import build_task_data
from farlab.errors import ConfigError
from farlab.models.loading import build_student, head_for, load_tokenizer
from farlab.teachers.backends import TEACHER_BACKENDS
from farlab.teachers.cache import teacher_identity
from farlab.teachers.store import store_key
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher, sft_store_material
from farlab.validate import validate_config
from tests.lookalikes import save_model

LM = ["task=europarl_en_fr", "model=tiny_llama", "task.train_limit=8", "task.eval_limit=2", "task.max_length=64",
      "train.progress_bar=false"]


def _dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def _built(cfg):
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    return data, tokenizer, *build_student(cfg, head_for(data), tokenizer, None, need_base_teacher=True)


def test_config_sources_load_in_their_side_s_dtype(compose_cfg):
    cfg = compose_cfg([*LM, "model.teacher.dtype=bfloat16", "model.student.dtype=float16"])
    validate_config(cfg)
    _, _, student, teacher = _built(cfg)
    assert _dtypes(teacher) == {torch.bfloat16} and _dtypes(student) == {torch.float16}


def test_default_is_float32_and_a_from_teacher_student_keeps_its_own(compose_cfg):
    cfg = compose_cfg(["task=cola", "model=tiny_bert", "task.train_limit=8", "task.eval_limit=4",
                       "model.teacher.dtype=bfloat16", "model.student.source=from_teacher",
                       "model.student.init_blocks=[1,3]"])
    _, _, student, teacher = _built(cfg)
    assert _dtypes(teacher) == {torch.bfloat16} and _dtypes(student) == {torch.float32}
    default = compose_cfg(["task=cola", "model=tiny_bert", "task.train_limit=8", "task.eval_limit=4"])
    assert default.model.teacher.dtype == default.model.student.dtype == "float32"
    assert all(_dtypes(m) == {torch.float32} for m in _built(default)[2:])


def test_a_pretrained_folder_loads_in_the_asked_dtype(compose_cfg, tmp_path):
    base = compose_cfg(LM)
    folder = save_model({**base.model.teacher.config}, tmp_path / "teacher", AutoModelForCausalLM)
    cfg = compose_cfg([*LM, "model.teacher.source=pretrained", f"model.teacher.path={folder}",
                       "model.teacher.dtype=bfloat16"])
    validate_config(cfg)
    _, _, _, teacher = _built(cfg)
    assert _dtypes(teacher) == {torch.bfloat16}


def test_the_hf_and_cache_backends_run_the_teacher_in_its_dtype(compose_cfg, tmp_path):
    cfg = compose_cfg(["task=cola", "model=tiny_bert", "task.train_limit=8", "task.eval_limit=4",
                       "model.teacher.dtype=bfloat16", "teacher_strategy=frozen_base", "teacher=cache",
                       f"teacher.cache.dir={tmp_path / 'cache'}", "teacher.cache.batch_size=4"])
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    seen = []

    def loader(ctx):
        seen.append(prepare_teacher(ctx))
        return seen[-1]

    for backend in ("hf", "cache"):
        ctx = TeacherContext(TeacherSettings.from_run_config(cfg), None, data, tokenizer, None, plan)
        prepared = TEACHER_BACKENDS.get(backend).prepare(ctx, loader)
        assert _dtypes(seen[-1]) == {torch.bfloat16}, backend
    assert prepared.loaded_teacher  # the cache was built by the bf16 teacher


def test_dtype_is_part_of_the_store_and_cache_keys_and_float32_keeps_old_keys(compose_cfg):
    def settings(*extra):
        return TeacherSettings.from_run_config(compose_cfg(["task=cola", "model=tiny_bert", *extra]))

    f32, bf16, fp16 = (settings(f"model.teacher.dtype={d}") for d in ("float32", "bfloat16", "float16"))
    keys = {store_key(sft_store_material(s)) for s in (f32, bf16, fp16)}
    assert len(keys) == 3
    # an entry written before dtype existed: the material had no dtype field; float32 gives that same key
    legacy = sft_store_material(f32)
    assert "dtype" not in legacy["teacher"] and "pad_token" not in legacy
    assert sft_store_material(settings("model.student.dtype=bfloat16")) == legacy  # the student's is not the teacher's
    base = [settings("teacher_strategy=frozen_base", "teacher=cache", f"model.teacher.dtype={d}")
            for d in ("float32", "bfloat16")]
    idents = [teacher_identity(s, "classification") for s in base]
    assert "dtype" not in idents[0] and idents[1]["dtype"] == "bfloat16"
    sft = [teacher_identity(s, "classification") for s in (f32, bf16)]
    assert sft[0]["sft_store_key"] != sft[1]["sft_store_key"]


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_bad_dtype_is_refused_with_the_choices(compose_cfg, role):
    cfg = compose_cfg(["task=cola", "model=tiny_bert", f"model.{role}.dtype=bfloat61"])
    with pytest.raises(ConfigError, match=rf"model.{role}.dtype 'bfloat61'; valid: bfloat16, float16, float32; "
                                          r"did you mean 'bfloat16'\?"):
        validate_config(cfg)



def test_the_teacher_server_serves_in_the_asked_dtype(compose_cfg, tmp_path):
    from farlab.teachers.serve import LogprobModel

    cfg = compose_cfg(LM)
    folder = save_model({**cfg.model.teacher.config}, tmp_path / "teacher", AutoModelForCausalLM)
    served = LogprobModel(str(folder), cfg.model.tokenizer, "t", 5, dtype="bfloat16")
    assert _dtypes(served.model) == {torch.bfloat16}
    assert _dtypes(LogprobModel(str(folder), cfg.model.tokenizer, "t", 5).model) == {torch.float32}
