"""Context distillation (prefix baking): the teacher is prompted differently from the student.

The teacher sees ``distill.context`` + the prompt (optionally through its own template and chat template), the
student only the prompt; both see the same response tokens. A task handler that supports it adds the teacher's
sequence to each training row as ``teacher_input_ids`` / ``teacher_attention_mask`` / ``teacher_labels``; the
collator pads them to their own width. :func:`teacher_side` hands a backend the teacher's batch, and
:func:`align_view` moves the teacher's outputs from its response positions onto the student's, so the response
losses (dense, chunked or top-k) compare the same response token on both sides whatever the prompt lengths.

Alignment is by rank, not by offset: the k-th response position of a student row meets the k-th response
position of the same teacher row. Both rows hold the same response, so the counts must agree (checked).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from farlab.errors import DataError
from farlab.losses.base import ModelView, TopK

TEACHER_PREFIX = "teacher_"  # batch keys of the teacher's own sequence
TEACHER_KEYS = tuple(TEACHER_PREFIX + k for k in ("input_ids", "attention_mask", "labels"))
TEMPLATE_FIELDS = ("source", "source_lang", "target_lang", "context")  # a teacher template may also name {context}


@dataclass(frozen=True)
class TeacherPrompt:
    """The teacher's prompt, resolved from ``distill`` (the context file read)."""

    context: str = ""
    template: str | None = None  # None = the task's prompt template
    chat: bool | None = None  # None = the task's use_chat_template

    @property
    def inline(self) -> bool:
        """The template places the context itself (a ``{context}`` field)."""
        return self.template is not None and "context" in template_fields(self.template)


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _context_text(distill: Any) -> str:
    if distill.context_file:
        path = Path(distill.context_file).expanduser()
        if not path.is_file():
            raise DataError(f"distill.context_file={distill.context_file!r} not found")
        return path.read_text(encoding="utf-8").strip()
    return distill.context or ""


def teacher_prompt(distill: Any) -> TeacherPrompt | None:
    """The teacher's prompt for ``distill`` settings, or None when the teacher is prompted like the student."""
    if distill is None:
        return None
    prompt = TeacherPrompt(_context_text(distill), distill.teacher_template, distill.teacher_chat_template)
    return prompt if (prompt.context or prompt.template is not None or prompt.chat is not None) else None


def context_problems(distill: Any, task_cfg: Any, plan: Any) -> list[str]:
    """Model-free checks of ``distill`` against the task family and the loss plan."""
    from farlab.data import TASK_FAMILIES

    if distill is None:
        return []
    if distill.context and distill.context_file:
        return [f"distill.context and distill.context_file are both set ({distill.context_file!r}); keep one"]
    try:
        prompt = teacher_prompt(distill)
    except DataError as err:
        return [str(err)]
    if prompt is None:
        return []
    problems = []
    family = task_cfg.get("family")
    if family in TASK_FAMILIES and not getattr(TASK_FAMILIES.get(family), "teacher_prompts", False):
        supported = sorted(n for n in TASK_FAMILIES.names() if getattr(TASK_FAMILIES.get(n), "teacher_prompts", False))
        problems.append(f"distill.context / teacher_template need a task family that builds teacher prompts "
                        f"({', '.join(supported)}); task {task_cfg.get('name')!r} is family {family!r}")
    if prompt.template is not None:
        fields = template_fields(prompt.template)
        if "source" not in fields:
            problems.append(f"distill.teacher_template={prompt.template!r} has no {{source}} field")
        if fields - set(TEMPLATE_FIELDS):
            problems.append(f"distill.teacher_template uses unknown fields {sorted(fields - set(TEMPLATE_FIELDS))}; "
                            f"valid: {', '.join(TEMPLATE_FIELDS)}")
    if not plan.needs_teacher:
        problems.append("distill.context / teacher_template are set, but the loss uses no teacher "
                        f"(loss={plan.config.name}): pick a distillation loss, e.g. loss=response_kl")
    if plan.needs_attentions:
        problems.append("attention losses compare [T, T] maps, which differ in size when the teacher's prompt differs "
                        "from the student's: drop the attention term (e.g. loss=combined_fr) or distill.context")
    return problems


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def has_teacher_side(batch: dict[str, Any]) -> bool:
    return TEACHER_KEYS[0] in batch


def teacher_side(batch: dict[str, Any]) -> dict[str, Any]:
    """The teacher's batch: its own input_ids/attention_mask/labels, the bookkeeping (example_id) shared.
    The batch itself when the teacher is prompted like the student."""
    if not has_teacher_side(batch):
        return batch
    shared = {k: v for k, v in batch.items() if not k.startswith(TEACHER_PREFIX) and TEACHER_PREFIX + k not in batch}
    return {**shared, **{k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)}}


def student_side(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without the teacher's sequence (what the student model is given)."""
    return {k: v for k, v in batch.items() if not k.startswith(TEACHER_PREFIX)}


def with_teacher_prompts(original: dict[str, Tensor], sampled: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
    """An on-policy batch (the student's samples, farlab.losses.gkd) given the teacher's sequences: each row's
    teacher prompt from ``original`` + the continuation the student sampled. ``sampled`` itself when the teacher
    is prompted like the student."""
    if not has_teacher_side(original):
        return sampled
    teacher = teacher_side(original)
    target = (teacher["labels"] != -100) & teacher["attention_mask"].bool()
    prompt_lengths = torch.where(target.any(1), target.int().argmax(1), teacher["attention_mask"].sum(1)).tolist()
    rows, labels = [], []
    for b, n in enumerate(prompt_lengths):
        completion = sampled["input_ids"][b][sampled["labels"][b] != -100].tolist()
        rows.append(teacher["input_ids"][b, :n].tolist() + completion)
        labels.append([-100] * n + completion)
    width = max(len(r) for r in rows)
    device = sampled["input_ids"].device

    def pad(seqs: list[list[int]], value: int) -> Tensor:
        return torch.tensor([q + [value] * (width - len(q)) for q in seqs], device=device)

    return {**sampled, "teacher_input_ids": pad(rows, pad_id),
            "teacher_attention_mask": pad([[1] * len(r) for r in rows], 0), "teacher_labels": pad(labels, -100)}


def aligned_index(student_mask: Tensor, teacher_mask: Tensor) -> Tensor:
    """``[B, T_student]`` teacher positions: the k-th masked student position gets the k-th masked teacher position
    of the same row; unmasked student positions get 0 (any finite row; no loss reads them)."""
    s, t = student_mask.bool(), teacher_mask.bool()
    ns, nt = s.sum(1), t.sum(1)
    if not torch.equal(ns, nt):
        b = int((ns != nt).nonzero()[0, 0])
        raise DataError(f"batch row {b}: the student has {int(ns[b])} response positions but the teacher "
                        f"{int(nt[b])}; context distillation needs the same response tokens on both sides")
    width = t.shape[1]
    positions = torch.arange(width, device=t.device).expand_as(t)
    order = torch.argsort(torch.where(t, positions, positions + width), dim=1)  # masked positions first, in order
    rank = (s.long().cumsum(1) - 1).clamp(0, width - 1)
    return torch.where(s, order.gather(1, rank), torch.zeros_like(rank))


def gather_positions(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t], ...]`` for ``x`` of shape ``[B, T_teacher, ...]``: ``[B, T_student, ...]``."""
    idx = index.to(x.device).reshape(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


Masks = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor | None]]


def align_view(view: ModelView, teacher_batch: dict[str, Tensor], student_batch: dict[str, Tensor],
               masks: Masks) -> ModelView:
    """The teacher's view moved onto the student's positions: distributions (logits, top-k, the chunked path's
    final hidden state) by response position, hidden states by target-token position."""
    if teacher_batch is student_batch:
        return view
    if view.attentions:
        raise ValueError("attention maps cannot be aligned between prompts of different lengths")
    s_tokens, s_response = masks(student_batch)
    t_tokens, t_response = masks(teacher_batch)
    if s_response is None or t_response is None:
        raise ValueError("context distillation needs response masks (a decoder task)")
    by_response = aligned_index(s_response, t_response)
    take = lambda x: None if x is None else gather_positions(x, by_response)
    hidden = None
    if view.hidden_states:
        by_token = aligned_index(s_tokens, t_tokens)
        hidden = tuple(None if h is None else gather_positions(h, by_token) for h in view.hidden_states)
    topk = None if view.topk is None else TopK(take(view.topk.ids), take(view.topk.logprobs))
    return ModelView(logits=take(view.logits), hidden_states=hidden, topk=topk, lm_head=view.lm_head,
                     final_hidden=take(view.final_hidden))
