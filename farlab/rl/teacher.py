"""The teacher as a reward: minus the reverse KL from the student to the teacher on the student's own samples.

For each sampled completion y of prompt x the reward is minus the per-position reverse KL
``KL(p_s(. | x, y<t) || p_t(. | x, y<t))`` at temperature 1, averaged over the completion's tokens
(``rl.teacher_kl=mean``, the default) or summed (``sum``: the sequence-level reverse KL, which GRPO can lower by
stopping early: measured in docs/rl.md). Added to the task rewards with weight ``rl.teacher_weight``, GRPO then
pushes the student towards sequences the teacher finds likely (on-policy distillation).

The teacher's distribution comes from a teacher backend (:mod:`farlab.teachers.backends`), so the reward works with
the in-process model (``teacher=hf``: dense logits, or its top-k with ``teacher.top_k``) and with an
OpenAI-compatible server (``teacher=openai``: top-k prompt logprobs of prompt + completion). The per-position
value is farlab's response loss with ``fn=reverse_kl`` at T = 1 (:class:`farlab.losses.response.ResponseLoss`),
so a top-k teacher is handled exactly as in top-k KD: ``rl.teacher_topk_tail`` ``bucket`` (default) keeps the
mass outside the teacher's top-k as one extra outcome (a lower bound of the full reverse KL), ``renormalize``
restricts both distributions to the top-k. Both models read the same token ids, so the teacher must share the
student's tokenizer (checked before any model loads, :mod:`farlab.rl.checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from farlab.losses.base import TopK
from farlab.losses.divergences import soften, topk_logprobs
from farlab.losses.response import ResponseLoss
from farlab.rl.rewards import checked
from farlab.teachers.backends.base import TeacherBackend
from farlab.teachers.backends.hf import HFBackend

NAME = "teacher_reverse_kl"
REDUCTIONS = ("mean", "sum")
ESTIMATORS = ("sampled", "analytic")
MONITOR_KEY = "teacher/reverse_kl"  # the analytic per-token mean reverse KL, logged every step (lower is closer)


def prompt_token_ids(tokenizer: Any, prompts: list[Any]) -> list[list[int]]:
    """The prompt ids exactly as ``trl.GRPOTrainer._tokenize_prompts`` builds them for text-only prompts: plain
    text through the tokenizer (special tokens added), chats through the chat template with the generation prompt."""
    if prompts and not isinstance(prompts[0], str):
        out = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


def as_backend(teacher: nn.Module | TeacherBackend) -> TeacherBackend:
    """A teacher backend; a bare model is the in-process teacher with its dense logits."""
    return teacher if isinstance(teacher, TeacherBackend) else HFBackend(teacher)


def sampled_reverse_kl(student_logits: Tensor, teacher: Tensor | TopK, next_tokens: Tensor,
                       topk_tail: str = "bucket") -> Tensor:
    """``[N, T]``: ``log p_s(y) - log p_t(y)`` at each position's sampled next token ``y``: the single-sample
    estimate whose sum over a completion is unbiased for the sequence reverse KL, and whose REINFORCE gradient is
    the reverse KL's gradient (the score of ``log p_s`` has mean zero). A top-k teacher reads the outcome on the
    same support as the analytic value: the token itself when in the top-k, else the tail outcome (``bucket``) or
    nothing (``renormalize``: 0 there)."""
    if isinstance(teacher, TopK):
        ls, lt = topk_logprobs(student_logits, teacher.ids, teacher.logprobs, temperature=1.0, tail=topk_tail)
        hit = teacher.ids == next_tokens.unsqueeze(-1)
        inside = hit.any(-1)
        index = torch.where(inside, hit.float().argmax(-1), teacher.ids.shape[-1])
        valid = inside | (topk_tail == "bucket")
        index = torch.where(valid, index, 0)
    else:
        ls, lt = soften(student_logits), soften(teacher)
        index, valid = next_tokens, torch.ones_like(next_tokens, dtype=torch.bool)
    value = (ls.gather(-1, index.unsqueeze(-1)) - lt.gather(-1, index.unsqueeze(-1))).squeeze(-1)
    return torch.where(valid, value, value.new_zeros(()))


def sequence_reverse_kl(student: Any, teacher: nn.Module | TeacherBackend, prompt_ids: list[list[int]],
                        completion_ids: list[list[int]], pad_id: int, reduction: str = "sum",
                        topk_tail: str = "bucket", estimator: str = "analytic") -> tuple[Tensor, Tensor]:
    """Per sequence ``[N]``: the reverse KL at the completion tokens' predicting positions, summed or averaged,
    by ``estimator`` (``analytic``: the full per-position KL; ``sampled``: :func:`sampled_reverse_kl`); and the
    analytic per-token mean, which the run logs whatever the estimator.

    ``teacher`` is a model (dense) or any teacher backend: the rows go to it right-padded, as a training batch."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(r) for r in rows)
    device = next(student.parameters()).device
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    # The logit at position t predicts token t + 1: completion token j of row i sits at len(prompt_i) + j.
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        mask[i, len(p) - 1 : len(p) - 1 + len(c)] = True
    view = as_backend(teacher)({"input_ids": input_ids, "attention_mask": attention}, hidden_states=False,
                               attentions=False, grad=False, detach=True).view
    target = view.logits if view.logits is not None else view.topk
    if target is None:
        raise ValueError("the teacher backend returned neither logits nor top-k log-probs")
    with torch.no_grad():
        s_logits = student(input_ids=input_ids, attention_mask=attention).logits
        analytic = ResponseLoss("reverse_kl", temperature=1.0, topk_tail=topk_tail).values(s_logits, target)
        next_tokens = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # the last column is never masked
        per_position = analytic if estimator == "analytic" else sampled_reverse_kl(s_logits, target, next_tokens,
                                                                                   topk_tail)
    count = mask.sum(-1).clamp_min(1)

    def masked_sum(values: Tensor) -> Tensor:
        return torch.where(mask, values, values.new_zeros(())).sum(-1)

    total = masked_sum(per_position)
    return (total / count if reduction == "mean" else total), masked_sum(analytic) / count


class TeacherReward:
    """A TRL reward function (``__name__`` ``teacher_reverse_kl``): minus the sequence reverse KL to the teacher.

    ``teacher`` is a model or a teacher backend (hf, openai). The student is the policy being trained;
    :meth:`bind` hands it over once the GRPOTrainer holds it, with ``monitor(key, value)``, which receives the
    batch's analytic per-token mean reverse KL (:data:`MONITOR_KEY`) each call.
    """

    __name__ = NAME

    def __init__(self, teacher: nn.Module | TeacherBackend, tokenizer: Any, reduction: str = "mean",
                 topk_tail: str = "bucket", estimator: str = "sampled") -> None:
        self.teacher, self.tokenizer, self.reduction, self.student = as_backend(teacher), tokenizer, reduction, None
        self.topk_tail, self.estimator = topk_tail, estimator
        self.monitor: Callable[[str, float], None] | None = None

    def bind(self, student: Any, monitor: Callable[[str, float], None] | None = None) -> TeacherReward:
        self.student, self.monitor = student, monitor
        return self

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]],
                 **_: Any) -> list[float]:
        if self.student is None:
            raise RuntimeError("TeacherReward.bind(student) was not called")
        was_training = self.student.training
        self.student.eval()
        try:
            kl, token_mean = sequence_reverse_kl(
                self.student, self.teacher, prompt_token_ids(self.tokenizer, prompts),
                [list(c) for c in completion_ids], self.tokenizer.pad_token_id, self.reduction, self.topk_tail,
                self.estimator)
        finally:
            self.student.train(was_training)
        if self.monitor is not None:
            self.monitor(MONITOR_KEY, float(token_mean.mean()))
        return checked(NAME, (-kl).tolist())
