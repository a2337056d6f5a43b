"""LoRA through PEFT: adapters on the student (and on a co-trained teacher), merged for export."""

from __future__ import annotations

import logging
from typing import Any

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from farlab.registry import Registry

log = logging.getLogger(__name__)

PEFT_TASK_TYPES: Registry[TaskType] = Registry("task kind")
PEFT_TASK_TYPES.add("classification", TaskType.SEQ_CLS)  # keeps the fresh classifier head trainable
PEFT_TASK_TYPES.add("causal_lm", TaskType.CAUSAL_LM)


def apply_lora(model: PreTrainedModel, lora: Any, kind: str) -> PeftModel:
    config = LoraConfig(
        task_type=PEFT_TASK_TYPES.get(kind),
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%d: %.2fM of %.1fM parameters train", lora.r, lora.alpha, trainable / 1e6, total / 1e6)
    return peft_model


def merged(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The plain model with adapters folded in (for final/); a non-PEFT model is returned as is."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model
