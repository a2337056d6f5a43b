"""The data every distillation loss sees, and the interface every loss implements.

Layer index space (used by every layer map, feature loss and attention loss in farlab):
``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of block ``i``
(1-based), exactly as Hugging Face returns them with ``output_hidden_states=True``.
Attention maps are indexed by block too: block ``i`` (1-based) is ``attentions[i - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass
class TopK:
    """A sparse view of the teacher's distribution: top-k ids and their log-probabilities.

    ``ids`` and ``logprobs`` have shape ``[..., k]`` matching the leading dims of the student's logits.
    """

    ids: Tensor
    logprobs: Tensor


@dataclass
class ModelView:
    """What one model produced for a batch."""

    logits: Tensor | None = None  # [B, C] for classifiers, [B, T, V] for language models
    hidden_states: tuple[Tensor, ...] | None = None  # [0] = embeddings, [i] = block i output
    attentions: tuple[Tensor, ...] | None = None  # [i-1] = block i attention probs [B, H, T, T]
    topk: TopK | None = None  # sparse teacher (cache / server backends)
    lm_head: nn.Module | None = None  # output head, for the chunked LM path
    final_hidden: Tensor | None = None  # input to lm_head [B, T, D], for the chunked LM path


@dataclass
class DistillBatch:
    """Student and teacher views of one batch plus the masks that say which positions count."""

    student: ModelView
    teacher: ModelView
    token_mask: Tensor  # [B, T] attention mask: 1 = real token (features, attention maps)
    response_mask: Tensor | None = None  # [B, T] for LM logits (prompt + padding = 0); None for [B, C]


class LossComponent(nn.Module):
    """One distillation term. Subclasses set ``kind`` and declare what they need from the models."""

    kind: ClassVar[str] = "response"  # response | feature | attention
    needs_hidden_states: ClassVar[bool] = False
    needs_attentions: ClassVar[bool] = False

    def forward(self, batch: DistillBatch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def float32(x: Tensor) -> Tensor:
    """Loss math accumulates in float32 whatever the model dtype."""
    return x if x.dtype == torch.float32 else x.float()
