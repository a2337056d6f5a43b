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

from farlab.data.context import align_view, teacher_side, with_teacher_prompts
from farlab.data.kinds import TASK_KINDS
from farlab.losses.base import DistillBatch
from farlab.losses.objective import DistillationObjective
from farlab.models.forward import detached_lm_ce, run_model
from farlab.teachers.backends.base import TeacherBackend
from farlab.teachers.backends.hf import HFBackend


class DistillationModule(nn.Module):
    # The Trainer must scale our loss for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(
        self,
        student: PreTrainedModel,
        teacher: PreTrainedModel | None,
        objective: DistillationObjective,
        kind: str = "classification",
        teacher_trainable: bool = False,
        teacher_ce_weight: float = 1.0,
        detach_targets: bool = True,
        backend: TeacherBackend | None = None,
        vocab_align: Any = None,
        on_policy: Any = None,
    ) -> None:
        """``backend`` gives the teacher's view (default: the in-process ``teacher``, dense; cache/server
        backends need no ``teacher``); ``vocab_align(student_view, teacher_view)`` reconciles logit widths
        (farlab.teachers.tokenizers); ``on_policy`` swaps batches for student samples (farlab.losses.gkd)."""
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.objective = objective
        task_kind = TASK_KINDS.get(kind)
        self.masks = task_kind.masks
        self.teacher_trainable = teacher_trainable and teacher is not None
        self.teacher_ce_weight = teacher_ce_weight
        self.detach_targets = detach_targets
        # Causal LMs with a chunked response loss never build the full [B, T, V] logits.
        self.chunk_size = objective.lm_chunk_size if task_kind.decoder_only else None
        self.decoder_only = task_kind.decoder_only
        default_backend = HFBackend(teacher, chunk_size=self.chunk_size) if teacher is not None else None
        self.teacher_backend = backend if backend is not None else default_backend
        self.vocab_align, self.on_policy = vocab_align, on_policy
        # Run counters (farlab.teachers.backends.accounting logs them per optimizer step).
        self.teacher_forwards = self.batches_seen = self.on_policy_batches = 0
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
        on_policy = self.on_policy is not None and self.on_policy.use(step)
        if on_policy:  # GKD: the student's own continuation of the prompt replaces the target
            sampled = self.on_policy.sample(self.student, batch)
            batch = with_teacher_prompts(batch, sampled, self.on_policy.pad_token_id)  # + the teacher's context
        self.batches_seen += 1
        self.on_policy_batches += int(on_policy)
        ce_batch = gold_rows(batch)  # transfer rows (no gold label) never reach CE
        # Pure distillation of a decoder (ce_weight 0) keeps the student's CE out of the graph: it is logged, computed
        # without grad over the target rows only, instead of a full-logit log-softmax kept for a backward times 0.
        monitor_ce = self.decoder_only and not objective.uses_ce and "labels" in ce_batch
        student_batch = {k: v for k, v in ce_batch.items() if k != "labels"} if monitor_ce else ce_batch
        ce, student_view = run_model(self.student, student_batch, flags, self.chunk_size)
        if monitor_ce:
            ce = detached_lm_ce(student_view, ce_batch["labels"], self.chunk_size)
        ce = ce if not on_policy or ce is None else ce * 0.0  # no CE on its own samples
        if self.teacher_backend is None or not objective.needs_teacher:
            return objective(None, ce, step, max_steps)

        teacher_batch = teacher_side(batch)  # the batch itself unless the teacher has its own prompt (distill.context)
        teacher = self.teacher_backend(
            teacher_side(ce_batch if self.teacher_trainable else batch),  # a co-trained teacher's CE skips transfer rows
            hidden_states=flags["output_hidden_states"],
            attentions=flags["output_attentions"],
            grad=self.teacher_trainable,
            detach=self.detach_targets or not self.teacher_trainable,
        )
        self.teacher_forwards += teacher.forwards
        token_mask, response_mask = self.masks(batch)
        teacher_view = align_view(teacher.view, teacher_batch, batch, self.masks)  # onto the student's positions
        if self.vocab_align is not None:
            student_view, teacher_view = self.vocab_align(student_view, teacher_view)
        distill = DistillBatch(
            student=student_view,
            teacher=teacher_view,
            token_mask=token_mask,
            response_mask=response_mask,
        )
        total, parts = objective(distill, ce, step, max_steps)
        if self.teacher_trainable:
            total = total + self.teacher_ce_weight * teacher.loss
            parts["teacher_ce"] = float(teacher.loss.detach())
        return total, parts


def gold_rows(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch as CE sees it: transfer rows (``transfer == 1``, no gold label) get labels -100, which every CE
    ignores; a batch of transfer rows only loses its labels (CE = 0, not the NaN of a mean over nothing). The
    masks of the distillation terms are taken from the batch itself, so transfer rows keep every KD term."""
    flag = batch.get("transfer")
    if flag is None or "labels" not in batch or not bool(flag.any()):
        return batch
    out = dict(batch)
    if bool(flag.all()):
        del out["labels"]
        return out
    labels = batch["labels"].clone()
    labels[flag.bool()] = -100
    out["labels"] = labels
    return out


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
