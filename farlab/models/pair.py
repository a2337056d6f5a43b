"""The module the Trainer optimises: student, optional teacher, and the distillation objective.

Putting all three in one ``nn.Module`` lets the Trainer's optimizer see every trainable parameter
(student, projections, a co-trained teacher) without special cases, while a frozen teacher's
parameters have ``requires_grad=False`` and never reach the optimizer.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.objective import DistillationObjective


class DistillationModule(nn.Module):
    # The Trainer must scale our loss for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel | None,
        objective: DistillationObjective,
        teacher_trainable: bool = False,
        teacher_ce_weight: float = 1.0,
        detach_targets: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.objective = objective
        self.teacher_trainable = teacher_trainable and teacher is not None
        self.teacher_ce_weight = teacher_ce_weight
        self.detach_targets = detach_targets
        if teacher is not None and not self.teacher_trainable:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        if self.teacher is not None and not self.teacher_trainable:
            self.teacher.eval()  # a frozen teacher never runs dropout
        return self

    def forward(self, step: int = 0, max_steps: int = 1, **batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        objective = self.objective
        flags = {
            "output_hidden_states": objective.needs_hidden_states,
            "output_attentions": objective.needs_attentions,
        }
        student_out = self.student(**batch, **flags)
        ce = student_out.loss
        if self.teacher is None or not objective.needs_teacher:
            return objective(None, ce, step, max_steps)

        teacher_grad = torch.enable_grad() if self.teacher_trainable else torch.no_grad()
        with teacher_grad:
            teacher_out = self.teacher(**batch, **flags)
        distill = DistillBatch(
            student=_view(student_out),
            teacher=_view(teacher_out, detach=self.detach_targets or not self.teacher_trainable),
            token_mask=batch["attention_mask"],
        )
        total, parts = objective(distill, ce, step, max_steps)
        if self.teacher_trainable:
            total = total + self.teacher_ce_weight * teacher_out.loss
            parts["teacher_ce"] = float(teacher_out.loss.detach())
        return total, parts


def _view(out: Any, detach: bool = False) -> ModelView:
    maybe = (lambda t: t.detach()) if detach else (lambda t: t)
    hidden = tuple(maybe(h) for h in out.hidden_states) if out.hidden_states else None
    attn = tuple(maybe(a) for a in out.attentions) if getattr(out, "attentions", None) else None
    return ModelView(logits=maybe(out.logits), hidden_states=hidden, attentions=attn)


def parameter_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter's bytes: equal fingerprints mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def frozen_guard(teacher: nn.Module | None, frozen: bool):
    """Raise if a frozen teacher's weights changed or received gradients during the block."""
    if teacher is None or not frozen:
        yield
        return
    before = parameter_fingerprint(teacher)
    yield
    if any(p.grad is not None for p in teacher.parameters()):
        raise RuntimeError("a frozen teacher received gradients; check teacher_strategy.trainable")
    if parameter_fingerprint(teacher) != before:
        raise RuntimeError("a frozen teacher's weights changed during training")
