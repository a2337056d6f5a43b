"""``train.gradient_checkpointing``: the same loss and gradients as without it, with and without LoRA.

Checkpointing recomputes each block's activations in the backward pass instead of storing them; it must change
memory, not the maths. The student is switched on exactly as a run does it (``make_trainer``), in train mode with
dropout active (checkpointing replays the RNG state, so the masks match too).
"""

from __future__ import annotations

import pytest
import torch

from farlab.data import build_task_data
from farlab.models.loading import load_tokenizer
from farlab.train import build_setup
from farlab.trainer.fit import FitSettings, make_trainer
from farlab.validate import validate_config

CASES = {
    "tiny_bert": ["task=cola", "model=tiny_bert", "task.train_limit=8", "task.eval_limit=4",
                  "loss=combined_far", "projection=linear"],
    "tiny_llama": ["task=europarl_en_fr", "model=tiny_llama", "task.train_limit=8", "task.eval_limit=2",
                   "task.max_length=64", "loss=combined_fr"],
}
LORA = {"tiny_bert": "[query,value]", "tiny_llama": "[q_proj,v_proj]"}


def _loss_and_grads(overrides, compose_cfg, tmp_path, checkpointing: bool):
    cfg = compose_cfg([*overrides, "teacher_strategy=frozen_base", f"train.gradient_checkpointing={checkpointing}",
                       "train.progress_bar=false", "train.max_steps=1", "train.batch_size=8"])
    plan = validate_config(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    data = build_task_data(cfg.task, tokenizer, cfg.seed)
    setup = build_setup(cfg, data, tokenizer, plan, "eager" if plan.needs_attentions else None)
    pair = setup.pair
    make_trainer(pair, data, tokenizer, tmp_path / str(checkpointing), FitSettings.from_config(cfg.train), cfg.seed)
    assert pair.student.is_gradient_checkpointing == checkpointing
    pair.train()
    batch = data.collator([data.train[i] for i in range(8)])
    torch.manual_seed(0)
    loss, parts = pair(**batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in pair.named_parameters() if p.requires_grad and p.grad is not None}
    trainable = {n for n, p in pair.named_parameters() if p.requires_grad}
    return loss.detach(), parts, grads, trainable


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpointing_gives_the_same_loss_and_gradients(case, lora, compose_cfg, tmp_path):
    overrides = list(CASES[case])
    if lora:
        overrides += ["model.student.lora.r=4", f"model.student.lora.target_modules={LORA[case]}"]
    plain_loss, plain_parts, plain_grads, trainable = _loss_and_grads(overrides, compose_cfg, tmp_path, False)
    ckpt_loss, ckpt_parts, ckpt_grads, _ = _loss_and_grads(overrides, compose_cfg, tmp_path, True)
    assert torch.isfinite(plain_loss) and plain_loss > 0
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert ckpt_parts.keys() == plain_parts.keys()
    # every trainable student parameter got a gradient both ways (LoRA: the adapters, through frozen embeddings)
    student_trainable = {n for n in trainable if n.startswith("student.")}
    assert student_trainable and student_trainable <= set(plain_grads) and student_trainable <= set(ckpt_grads)
    if lora:
        assert all("lora_" in n or "classifier" in n or "score" in n or "projection" in n
                   for n in student_trainable), sorted(student_trainable)[:5]
    assert ckpt_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
