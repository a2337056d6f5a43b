"""The SFT teacher fine-tuned with LoRA (``model.teacher.lora.r > 0``): adapters merged into a plain store entry,
the LoRA settings in the store key, the base weights outside the adapted modules untouched."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from farlab.data import build_task_data
from farlab.models.loading import build_model, head_for, load_tokenizer
from farlab.teachers.store import store_key
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher, sft_store_material
from farlab.trainer.sft import sft_fine_tuner
from farlab.validate import validate_config

PAIRS = {
    "tiny_bert": (["task=cola", "model=tiny_bert", "task.train_limit=32", "task.eval_limit=8",
                   "model.teacher.lora.target_modules=[query,value]"],
                  "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.intermediate.dense.weight"),
    "tiny_llama": (["task=europarl_en_fr", "model=tiny_llama", "task.train_limit=8", "task.eval_limit=2",
                    "task.max_length=64", "model.teacher.lora.target_modules=[q_proj,v_proj]"],
                   "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_lora_sft_teacher_is_merged_into_a_plain_store_entry(pair, compose_cfg, tmp_path):
    overrides, adapted, untouched = PAIRS[pair]
    cfg = compose_cfg([*overrides, "teacher_strategy=frozen_sft", f"teacher_strategy.store_dir={tmp_path}",
                       "teacher_strategy.recipe.max_steps=2", "teacher_strategy.recipe.batch_size=8",
                       "teacher_strategy.recipe.learning_rate=0.01", "teacher_strategy.recipe.warmup_ratio=0",
                       "model.teacher.lora.r=4", "model.teacher.lora.alpha=8", "train.progress_bar=false"])
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    settings = TeacherSettings.from_run_config(cfg)
    ctx = TeacherContext(settings, None, data, tokenizer, None, plan,
                         fine_tune=sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed))
    teacher = prepare_teacher(ctx)

    entry = next(p for p in tmp_path.glob(f"{data.name}-*") if p.is_dir())
    assert not list(entry.glob("adapter_*")), "the store holds merged weights, not adapters"
    state = load_file(entry / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in state)
    assert type(teacher) is head_for(data).auto_class.from_config(teacher.config).__class__
    key = json.loads((entry / "store_key.json").read_text())
    assert key["teacher"]["lora"]["r"] == 4 and adapted.split(".")[-2] in key["teacher"]["lora"]["target_modules"]

    set_seed(cfg.seed)
    base = build_model(cfg.model.teacher, head_for(data), None)
    assert not torch.equal(state[adapted], base.state_dict()[adapted])  # the adapters' delta, folded in
    assert torch.equal(state[untouched], base.state_dict()[untouched])  # LoRA trained nothing else there
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_lora_settings_are_part_of_the_store_key(compose_cfg):
    def key(*extra):
        return store_key(sft_store_material(TeacherSettings.from_run_config(
            compose_cfg(["task=cola", "model=tiny_bert", *extra]))))

    keys = [key(), key("model.teacher.lora.r=4"), key("model.teacher.lora.r=8"),
            key("model.teacher.lora.r=4", "model.teacher.lora.alpha=16")]
    assert len(set(keys)) == 4
