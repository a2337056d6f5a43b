"""Task kinds: one record per kind of model output (class labels, next tokens, next tokens from images).

Everything that differs between kinds lives in its :class:`TaskKind`: the model head, the masks the losses
use, how the eval split is predicted and scored, the PEFT task type, and two facts other parts ask
(are the logits over a vocabulary; does the chunked LM path apply). A new kind is this record plus its task
handler; no other module branches on a kind's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import TaskType
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSequenceClassification

from farlab.eval.lm import predict_lm, score_lm
from farlab.eval.loop import generate_from_images, predict_probabilities, score_classification
from farlab.registry import Registry

Masks = tuple[Tensor, Tensor | None]  # (token_mask [B, T], response_mask [B, T] or None)


@dataclass(frozen=True)
class Head:
    """Which Auto class builds a model for a task kind, and the config fields it needs."""

    auto_class: Any
    config_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskKind:
    name: str
    head: Callable[[Any], Head]  # TaskData -> Head
    masks: Callable[[dict[str, Tensor]], Masks]  # collated batch -> (token_mask, response_mask)
    predict: Callable[..., tuple[Any, list[Any]]]  # (model, data, batch_size, desc, progress) -> (predictions, refs)
    score: Callable[[Any, Any, list[Any]], dict[str, Any]]  # (data, predictions, references) -> metrics
    peft_task_type: TaskType
    vocabulary_logits: bool  # logits are over a vocabulary (LM) rather than over labels
    decoder_only: bool = False  # a text decoder: the chunked LM path (final_hidden + lm_head) and on-policy sampling apply


def classifier_fields(label_names: list[str]) -> dict[str, Any]:
    """num_labels plus id2label/label2id, so a saved classifier names its classes (``config.id2label``)."""
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)}}


def classifier_masks(batch: dict[str, Tensor]) -> Masks:
    """Logits are [B, C]: no response mask; features and attention use every real token."""
    return batch["attention_mask"], None


def lm_masks(batch: dict[str, Tensor]) -> Masks:
    """Only target tokens count (labels != -100): prompt and padding are masked for every term.

    The logit at position t predicts token t + 1, so the response mask is the target mask shifted
    left by one; hidden states and attention rows use the target positions themselves.
    """
    target = batch["labels"] != -100
    response = torch.zeros_like(target)
    response[:, :-1] = target[:, 1:]
    return target.long(), response.long()


TASK_KINDS: Registry[TaskKind] = Registry("task kind")


def text_decoder_kind(name: str, score: Callable[[Any, Any, list[Any]], dict[str, Any]]) -> TaskKind:
    """A kind whose model is a causal text decoder (masks, head, PEFT type, the chunked LM path and the eval pass
    shared: :func:`farlab.eval.lm.predict_lm`, whose :class:`~farlab.eval.predictions.TextPredictions` every such
    kind scores); only how it scores differs (text metrics and perplexity, GLUE as generation)."""
    return TaskKind(name, head=lambda data: Head(AutoModelForCausalLM), masks=lm_masks, predict=predict_lm,
                    score=score, peft_task_type=TaskType.CAUSAL_LM, vocabulary_logits=True, decoder_only=True)


TASK_KINDS.add("classification", TaskKind(
    "classification",
    head=lambda data: Head(AutoModelForSequenceClassification, classifier_fields(data.label_names)),
    masks=classifier_masks,
    predict=predict_probabilities,
    score=score_classification,
    peft_task_type=TaskType.SEQ_CLS,  # keeps the fresh classifier head trainable
    vocabulary_logits=False,
))
# Causal text decoders on text targets (translation, instruction responses, plain text): scored by the likelihood
# metrics the task lists (NLL/perplexity on the target tokens) and by the generation metrics it lists (BLEU, chrF,
# ROUGE-L, ...) on greedy/beam generations of the eval prompts.
TASK_KINDS.add("causal_lm", text_decoder_kind("causal_lm", score=score_lm))
# Vision-language answers are masked like causal LM targets (image and prompt tokens carry label -100).
TASK_KINDS.add("vision_lm", TaskKind(
    "vision_lm",
    head=lambda data: Head(AutoModelForImageTextToText),  # Qwen2-VL/Qwen3-VL ...ForConditionalGeneration
    masks=lm_masks,
    predict=generate_from_images,
    score=score_lm,  # generations only: a listed likelihood metric is an error
    peft_task_type=TaskType.CAUSAL_LM,  # the VLM forward takes pixel_values etc. as kwargs
    vocabulary_logits=True,
))
