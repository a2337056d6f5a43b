"""LoRA through PEFT: adapters on the student (and on a co-trained teacher), merged for export."""

from __future__ import annotations

import logging
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from farlab.data.kinds import TASK_KINDS
from farlab.errors import ConfigError

log = logging.getLogger(__name__)

def apply_lora(model: PreTrainedModel, lora: Any, kind: str) -> PeftModel:
    config = LoraConfig(
        task_type=TASK_KINDS.get(kind).peft_task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        if config.target_modules is not None:
            raise
        raise ConfigError(
            f"PEFT has no default LoRA target modules for model_type {model.config.model_type!r}; set "
            "model.student.lora.target_modules (and model.teacher's), e.g. [q_proj, k_proj, v_proj, o_proj]"
        ) from err
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA r=%d alpha=%d: %.2fM of %.1fM parameters train", lora.r, lora.alpha, trainable / 1e6, total / 1e6)
    return peft_model


def merged(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The plain model with adapters folded in (for final/); a non-PEFT model is returned as is."""
    return model.merge_and_unload() if isinstance(model, PeftModel) else model
