"""``teacher.backend=self``: the teacher is the student itself with its LoRA adapters switched off.

The base weights under a LoRA student are exactly the model the run started from, so "distil from the initial
model" (with ``distill.context``: bake a prompt into the adapters; seed 002's local-toggle) needs no second copy:
each teacher forward runs the student under PEFT's ``disable_adapter()``, in eval mode, without gradients. Memory
holds one model; the teacher stays the *initial* model however far the adapters move (TRL's SDFT calls this
``teacher_model_kind="base"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from farlab.teachers.backends.base import PreparedTeacher, TeacherBackend, TeacherOutput
from farlab.teachers.backends.hf import HFBackend


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode (no dropout) for the block, then each one's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _head_has_adapter(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    head = model.get_output_embeddings()
    return isinstance(head, LoraLayer) or any(isinstance(m, LoraLayer) for m in head.modules())


class SelfBackend(TeacherBackend):
    """The student (a PEFT model) run with its adapters disabled."""

    name = "self"

    def __init__(self, student: nn.Module, top_k: int | None = None, chunk_size: int | None = None) -> None:
        from peft import PeftModel

        if not isinstance(student, PeftModel):
            from farlab.errors import ConfigError

            raise ConfigError("teacher=self needs a LoRA student (model.student.lora.r > 0); got a plain "
                              f"{type(student).__name__}")
        self.student = student
        # The chunked path applies lm_head after this call returns, i.e. with the adapters back on: only when
        # the head carries no adapter may the teacher hand over final_hidden + lm_head instead of its logits.
        chunk = chunk_size if chunk_size is not None and not _head_has_adapter(student) else None
        self.inner = HFBackend(student, top_k, chunk)

    def __call__(
        self, batch: dict[str, Tensor], *, hidden_states: bool, attentions: bool, grad: bool, detach: bool
    ) -> TeacherOutput:
        with self.student.disable_adapter(), _eval_mode(self.student):
            out = self.inner(batch, hidden_states=hidden_states, attentions=attentions, grad=False, detach=True)
        return TeacherOutput(view=out.view, loss=None, forwards=1)


def prepare_self(ctx: Any, load_teacher: Any = None) -> PreparedTeacher:
    """No model is loaded: the backend is bound to the student once LoRA wraps it (``on_student``)."""
    from farlab.models.loading import head_for, spec_shape

    settings = ctx.settings
    chunk = ctx.plan.chunk_size if ctx.data.task_kind.decoder_only else None
    shape = spec_shape(settings.model.student, head_for(ctx.data))  # the teacher is the student's base model
    top_k = settings.backend.top_k
    return PreparedTeacher(model=None, shape=shape, vocab_size=None, on_student=True,
                           make_backend=lambda student: SelfBackend(student, top_k, chunk))


def validate_self(cfg: Any, plan: Any) -> list[str]:
    problems = []
    if cfg.model.student.lora.r <= 0:
        problems.append(f"teacher=self is the student with its LoRA adapters disabled, so the student needs adapters: "
                        f"model.student.lora.r={cfg.model.student.lora.r}, set it > 0 (e.g. 8)")
    ts = cfg.teacher_strategy
    if ts.init != "base" or ts.trainable:
        problems.append(f"teacher=self is the student's own base weights, frozen; teacher_strategy={ts.name} "
                        f"(init={ts.init}, trainable={ts.trainable}) cannot apply: use teacher_strategy=frozen_base")
    return problems
