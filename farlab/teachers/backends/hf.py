"""``teacher.backend=hf``: the in-process Hugging Face model (the default; the only one a co-trained teacher can use).

Dense by default (``ModelView.logits``, hidden states and attentions as the losses ask); with ``teacher.top_k``
it returns the same model's top-k log-probs instead, exactly what a cache or a server would give, which makes
it the reference the sparse backends are tested against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from farlab.losses.base import ModelView
from farlab.models.forward import detached, run_model
from farlab.teachers.backends.base import TeacherBackend, TeacherOutput, topk_from_logits


class HFBackend(TeacherBackend):
    name = "hf"

    def __init__(self, teacher: nn.Module, top_k: int | None = None, chunk_size: int | None = None) -> None:
        self.teacher = teacher  # a plain reference: the DistillationModule owns (registers) the module
        self.top_k = top_k
        self.chunk_size = None if top_k is not None else chunk_size  # top-k needs the logits

    def __call__(
        self, batch: dict[str, Tensor], *, hidden_states: bool, attentions: bool, grad: bool, detach: bool
    ) -> TeacherOutput:
        flags = {"output_hidden_states": hidden_states, "output_attentions": attentions}
        with torch.enable_grad() if grad else torch.no_grad():
            loss, view = run_model(self.teacher, batch, flags, self.chunk_size)
        if detach:
            view = detached(view)
        if self.top_k is not None:
            view = ModelView(topk=topk_from_logits(view.logits.detach(), self.top_k),
                             hidden_states=view.hidden_states, attentions=view.attentions)
        return TeacherOutput(view=view, loss=loss, forwards=1)


def hf_backend_factory(top_k: int | None, chunk_size: int | None = None) -> Any:
    """``make_backend`` for :class:`~farlab.teachers.backends.base.PreparedTeacher`: wraps the final module."""
    return lambda teacher: HFBackend(teacher, top_k, chunk_size)
