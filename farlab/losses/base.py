"""The data every distillation loss sees, and the interface every loss implements.

Layer index space (used by every layer map, feature loss and attention loss in farlab):
``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of block ``i``
(1-based), exactly as Hugging Face returns them with ``output_hidden_states=True``.
Attention maps are indexed by block too: block ``i`` (1-based) is ``attentions[i - 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from farlab.registry import Registry


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


@dataclass
class ModelShape:
    """The three numbers the loss builder needs from a model, without loading it."""

    num_layers: int
    hidden_size: int
    num_heads: int = 1

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        """From a ``transformers`` config (uses ``text_config`` for multimodal models)."""
        c = getattr(config, "text_config", None) or config
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or getattr(c, "dim", None)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None) or 1
        if layers is None or hidden is None:
            raise ValueError(f"cannot read num_hidden_layers/hidden_size from {type(config).__name__}")
        return cls(int(layers), int(hidden), int(heads))


@dataclass
class BuildContext:
    """What a component builder may read besides its own config: shared loss knobs, the two model shapes,
    the run's layer pairs and a projection factory (student width -> teacher width, one per pair)."""

    temperature: float
    student: ModelShape
    teacher: ModelShape
    layer_pairs: Callable[[], list[tuple[int, int]]]
    projection: Callable[[], nn.Module]
    extras: dict[str, Any] = field(default_factory=dict)


class LossComponent(nn.Module):
    """One distillation term. A subclass declares, as class attributes, everything the run must know about it
    before any model loads (:class:`farlab.losses.plan.LossPlan` reads them), and builds itself from its config.

    Register a new type with ``@COMPONENT_TYPES.register("name")``; its YAML then uses ``type: name``.
    """

    kind: ClassVar[str] = "response"  # the registry name (set by the subclass)
    letter: ClassVar[str] = ""  # F, A or R: its factor in the FAR factorial ("" = outside it)
    fns: ClassVar[Registry[Any]]  # the ``fn`` names this type accepts
    default_fn: ClassVar[str] = "kl"  # ``fn`` when the config leaves it unset
    needs_hidden_states: ClassVar[bool] = False
    needs_attentions: ClassVar[bool] = False
    needs_distribution: ClassVar[bool] = False  # reads the teacher's output distribution (logits or top-k)
    uses_layer_map: ClassVar[bool] = False

    @classmethod
    def from_config(cls, comp: Any, ctx: BuildContext) -> LossComponent:  # pragma: no cover - interface
        """Build from a :class:`~farlab.losses.spec.ComponentConfig` (``fn`` already defaulted)."""
        raise NotImplementedError

    def forward(self, batch: DistillBatch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


COMPONENT_TYPES: Registry[type[LossComponent]] = Registry("component type")


def float32(x: Tensor) -> Tensor:
    """Loss math accumulates in float32 whatever the model dtype."""
    return x if x.dtype == torch.float32 else x.float()
