"""The interface every teacher backend implements: a training batch in, a teacher :class:`ModelView` out.

A backend hides *where* teacher outputs come from (the in-process model, a cache on disk, a server), so
:class:`~farlab.trainer.pair.DistillationModule` and every loss stay the same whichever one a run uses.
Dense teachers fill ``ModelView.logits``; sparse ones fill ``ModelView.topk`` with the teacher's *untempered*
(T = 1) top-k log-probs, which the response loss softens itself (:func:`farlab.losses.divergences.topk_logprobs`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from farlab.losses.base import ModelShape, ModelView, TopK

if TYPE_CHECKING:
    from farlab.teachers.cache import TeacherCache

DEFAULT_TOP_K = 20  # cache/openai with teacher.top_k=null; vLLM's default --max-logprobs cap


@dataclass
class TeacherOutput:
    """One backend call: the teacher's view, its own CE (co-trained hf teachers only), forwards it ran."""

    view: ModelView
    loss: Tensor | None = None
    forwards: int = 1  # teacher forward passes this call cost (0 for a cache read)


class TeacherBackend(ABC):
    """Turns a training batch into the teacher's view of it."""

    name: ClassVar[str] = "backend"

    @abstractmethod
    def __call__(
        self, batch: dict[str, Tensor], *, hidden_states: bool, attentions: bool, grad: bool, detach: bool
    ) -> TeacherOutput:
        """``batch`` is the collated batch (``example_id`` included); flags say what the losses need."""


@dataclass
class PreparedTeacher:
    """What a backend's setup hands to the run (see :mod:`farlab.teachers.backends`)."""

    make_backend: Callable[[nn.Module | None], TeacherBackend]  # (in-process teacher or None), after LoRA wrapping
    model: nn.Module | None = None  # the in-process teacher (hf), else None
    shape: ModelShape | None = None  # the teacher's shape, for the loss builder
    vocab_size: int | None = None  # width of the teacher's logits; None = unknown (server)
    metrics: dict[str, Any] | None = None  # pre-training teacher metrics known without the model (cache)
    cache: TeacherCache | None = None  # the opened top-k cache (teacher=cache): the cache CLI reports it
    loaded_teacher: bool = False  # teacher=cache: this process loaded the teacher (to build or evaluate)
    on_student: bool = False  # make_backend gets the (LoRA-wrapped) student instead of a teacher (teacher=self)


def topk_from_logits(logits: Tensor, k: int) -> TopK:
    """The top-k of ``log_softmax(logits)`` at T = 1, in float32: what a cache stores and a server returns."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TopK(ids=ids, logprobs=values)


def filler_topk(shape: tuple[int, ...], k: int, device: torch.device | str = "cpu") -> TopK:
    """Rows for positions no loss reads (prompt, padding): id 0 with uniform log-probs, finite everywhere."""
    ids = torch.zeros(*shape, k, dtype=torch.long, device=device)
    return TopK(ids=ids, logprobs=torch.full((*shape, k), -math.log(k), dtype=torch.float32, device=device))
