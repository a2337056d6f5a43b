"""Response (logit) distillation: compare the student's output distribution with the teacher's.

Three ways to get there, one divergence implementation (:mod:`farlab.losses.divergences`):

* dense: ``student.logits`` ``[B, C]`` (classifier, ``response_mask=None`` -> batch mean) or ``[B, T, V]``
  (LM, masked by ``response_mask``; position ``t`` compares the two next-token distributions at ``t``,
  so the collator's mask must mark the positions whose *prediction* is a response token);
* chunked (``chunk_size`` set, student gives ``final_hidden`` + ``lm_head``): only the response rows
  are projected, ``chunk_size`` rows at a time, and the full ``[B*T, V]`` logits never exist
  (:mod:`farlab.losses.chunked`). Same value and gradients as dense;
* sparse: the teacher gives ``TopK(ids, logprobs)`` (cache / server backends); ``topk_tail`` picks
  ``renormalize`` (drop the mass outside the top-k) or ``bucket`` (keep it as one extra outcome), see
  :func:`farlab.losses.divergences.topk_logprobs`.

Every forward also leaves :attr:`ResponseLoss.teacher_entropy`: the mean entropy (nats, detached) of the
teacher's temperature-softened targets over the rows the loss averages (the top-k / bucket distribution
for a sparse teacher), which the objective logs as ``<name>/teacher_entropy``: a low value during training
is an overconfident teacher.

The loss never detaches the teacher itself: gradients reach the teacher exactly when its tensors require
grad (the caller detaches frozen teachers; co-training without detached targets is mutual learning), on
the dense and the chunked path alike. Teacher sources are used in this order: ``logits``, then
``final_hidden`` + ``lm_head``, then ``topk`` (never differentiable).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from farlab.losses.base import COMPONENT_TYPES, BuildContext, DistillBatch, LossComponent, ModelView, TopK
from farlab.losses.chunked import Stream, chunked_rows_sum
from farlab.losses.divergences import (
    DIVERGENCES,
    NEG_LOGIT,
    TOPK_TAILS,
    divergence_and_target,
    divergence_from_logprobs,
    masked_mean,
    topk_logprobs,
)

RESPONSE_FNS = DIVERGENCES  # kl reverse_kl jsd symmetric_kl mixed_kl tvd skew_kl skew_reverse_kl ce mse cosine

TeacherTarget = Tensor | TopK


@COMPONENT_TYPES.register("response")
class ResponseLoss(LossComponent):
    """``masked_mean(divergence(fn)(student, teacher), response_mask)``; fn from :data:`RESPONSE_FNS`."""

    kind, letter, fns, default_fn = "response", "R", RESPONSE_FNS, "kl"
    needs_distribution = True

    @classmethod
    def from_config(cls, comp: Any, ctx: BuildContext) -> ResponseLoss:
        return cls(fn=comp.fn, temperature=ctx.temperature, beta=comp.beta, skew=comp.skew, mix=comp.mix,
                   chunk_size=comp.chunk_size, topk_tail=comp.topk_tail)

    def __init__(
        self,
        fn: str = "kl",
        temperature: float = 2.0,
        beta: float = 0.5,
        skew: float = 0.1,
        mix: float = 0.5,
        chunk_size: int | None = None,
        topk_tail: str = "renormalize",
    ) -> None:
        super().__init__()
        RESPONSE_FNS.get(fn, context="component 'response'")
        if topk_tail not in TOPK_TAILS:
            raise ValueError(f"unknown topk_tail {topk_tail!r}; valid: {', '.join(TOPK_TAILS)}")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive number of rows or None, got {chunk_size}")
        self.fn, self.temperature, self.beta, self.skew, self.mix = fn, temperature, beta, skew, mix
        self.chunk_size, self.topk_tail = chunk_size, topk_tail
        self.teacher_entropy: Tensor | None = None  # detached, set by every forward

    def extra_repr(self) -> str:
        return f"fn={self.fn}, T={self.temperature}, chunk_size={self.chunk_size}, topk_tail={self.topk_tail}"

    # ------------------------------------------------------------------ math on one block of rows

    def values(self, student_logits: Tensor, teacher: TeacherTarget) -> Tensor:
        """Per-position loss for student logits ``[..., V]`` against dense logits or a TopK teacher."""
        return self._values_and_entropy(student_logits, teacher)[0]

    def _values_and_entropy(self, student_logits: Tensor, teacher: TeacherTarget) -> tuple[Tensor, Tensor]:
        """Per-position loss and per-position entropy of the teacher's softened target (detached)."""
        kw = {"temperature": self.temperature, "beta": self.beta, "skew": self.skew, "mix": self.mix}
        if isinstance(teacher, TopK):
            ls, lt = topk_logprobs(
                student_logits, teacher.ids, teacher.logprobs, temperature=self.temperature, tail=self.topk_tail
            )
            return divergence_from_logprobs(self.fn, ls, lt, **kw), _entropy(lt)
        values, target = divergence_and_target(self.fn, student_logits, teacher, **kw)
        return values, _entropy(target)

    # ------------------------------------------------------------------ entry point

    def forward(self, batch: DistillBatch) -> Tensor:
        s = batch.student
        if self.chunk_size is not None and s.final_hidden is not None and s.lm_head is not None:
            return self._chunked(batch)
        if s.logits is None:
            raise ValueError(
                "ResponseLoss needs student logits, or final_hidden + lm_head together with chunk_size"
            )
        student, teacher = s.logits, _dense_teacher(batch.teacher)
        mask = batch.response_mask if s.logits.dim() > 2 else None
        if mask is not None and mask.shape == student.shape[:-1]:
            # Only the rows the mean counts: prompt and padding rows are never softened (all rows: no copy).
            rows = mask.reshape(-1).nonzero().squeeze(1)
            if rows.numel() < mask.numel():
                student, teacher = _rows(student, rows), _rows(teacher, rows)
            mask = None
        values, entropy = self._values_and_entropy(student, teacher)
        self.teacher_entropy = masked_mean(entropy, mask)
        return masked_mean(values, mask)

    def _chunked(self, batch: DistillBatch) -> Tensor:
        s, t = batch.student, batch.teacher
        assert s.final_hidden is not None and s.lm_head is not None
        flat = s.final_hidden.reshape(-1, s.final_hidden.shape[-1])
        n_rows = flat.shape[0]
        mask = batch.response_mask
        rows = (torch.arange(n_rows, device=flat.device) if mask is None
                else mask.reshape(-1).nonzero().squeeze(1))  # no rows -> 0 with zero gradients
        streams = [Stream(flat, s.lm_head)]
        topk = None
        if t.logits is not None:
            streams.append(Stream(t.logits.reshape(n_rows, -1)))
        elif t.final_hidden is not None and t.lm_head is not None:
            streams.append(Stream(t.final_hidden.reshape(n_rows, -1), t.lm_head))
        elif t.topk is not None:
            k = t.topk.ids.shape[-1]
            topk = (t.topk.ids.reshape(n_rows, k), t.topk.logprobs.reshape(n_rows, k))
        else:
            raise ValueError(_NO_TEACHER)

        entropy_sum = flat.new_zeros((), dtype=torch.float32)

        def chunk_sum(outs: list[Tensor], idx: Tensor) -> Tensor:
            nonlocal entropy_sum
            teacher = outs[1] if topk is None else TopK(topk[0].index_select(0, idx), topk[1].index_select(0, idx))
            values, entropy = self._values_and_entropy(outs[0], teacher)
            entropy_sum = entropy_sum + entropy.sum()
            return values.sum()

        grad_fn = None
        teacher_grad = any(x.requires_grad for st in streams[1:] for x in (st.source, *st.params))
        if self.fn == "kl" and topk is None and not teacher_grad:  # a frozen dense teacher: closed-form gradient

            def grad_fn(outs: list[Tensor], idx: Tensor) -> tuple[Tensor, list[Tensor | None]]:
                nonlocal entropy_sum
                value, entropy, grad = forward_kl_value_and_grad(outs[0], outs[1], self.temperature)
                entropy_sum = entropy_sum + entropy
                return value, [grad, None]

        total = chunked_rows_sum(streams, rows, chunk_sum, self.chunk_size or 1, grad_fn)
        self.teacher_entropy = entropy_sum / max(rows.numel(), 1)
        return total / max(rows.numel(), 1)


_NO_TEACHER = "ResponseLoss needs teacher logits, final_hidden + lm_head, or topk; got none"


@torch.no_grad()
def _entropy(logprobs: Tensor) -> Tensor:
    """Entropy (nats) of each distribution given as log-probs ``[..., K]``; zero-probability outcomes add 0."""
    p = logprobs.detach().float().exp()
    return -torch.special.xlogy(p, p).sum(dim=-1)  # xlogy(0, 0) = 0; two passes over [..., K], not four


@torch.no_grad()
def forward_kl_value_and_grad(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """``T^2 KL(p_t || p_s)`` summed over rows, the teacher's entropy summed over rows, and the gradient of the first
    w.r.t. the student logits, ``T (p_s - p_t)``, for ``[n, V]`` logits. Works in place on both inputs (the chunked
    path owns them): three ``[n, V]`` float32 buffers plus one transient, where autograd through
    :func:`divergence` keeps ~9. The value is ``divergence("kl", ...)``'s (same floor, temperature and float32
    math, equal to float32 rounding)."""
    ls, lt = _log_softmax_(student, temperature), _log_softmax_(teacher, temperature)
    p_t = lt.exp()
    entropy = -_row_dot(p_t, lt).sum()
    value = _row_dot(p_t, lt.sub_(ls)).sum() * temperature**2  # lt is now log p_t - log p_s
    grad = ls.exp_().sub_(p_t).mul_(temperature)  # ls is now T (p_s - p_t)
    return value, entropy, grad


def _log_softmax_(logits: Tensor, temperature: float) -> Tensor:
    """:func:`soften` (float32, divided by T, floored at ``NEG_LOGIT``), in place for float32 inputs."""
    z = logits if logits.dtype == torch.float32 else logits.float()
    if temperature != 1.0:
        z.div_(temperature)
    z.clamp_min_(NEG_LOGIT).sub_(z.amax(dim=-1, keepdim=True))  # shift first, as log_softmax does
    return z.sub_(z.exp().sum(dim=-1, keepdim=True).log_())


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` without an ``[n, V]`` product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


def _rows(x: TeacherTarget, rows: Tensor) -> TeacherTarget:
    """Rows ``rows`` of ``[B, T, ...]`` logits (or of a TopK's ids and log-probs) flattened to ``[B*T, ...]``."""
    if isinstance(x, TopK):
        return TopK(_rows(x.ids, rows), _rows(x.logprobs, rows))  # type: ignore[arg-type]
    return x.reshape(-1, x.shape[-1]).index_select(0, rows)


def _dense_teacher(t: ModelView) -> TeacherTarget:
    if t.logits is not None:
        return t.logits
    if t.final_hidden is not None and t.lm_head is not None:
        return t.lm_head(t.final_hidden)
    if t.topk is not None:
        return t.topk
    raise ValueError(_NO_TEACHER)


def chunked_lm_cross_entropy(
    final_hidden: Tensor, lm_head: torch.nn.Module, labels: Tensor, chunk_size: int, ignore_index: int = -100
) -> Tensor:
    """Token-mean CE of ``lm_head(final_hidden)`` vs ``labels`` without materialising the logits.

    ``labels`` must already be aligned with positions (label at ``t`` is the target of the logits at
    ``t``, i.e. shifted by the caller). Lets a trainer using the chunked response path skip full logits.
    """
    flat = final_hidden.reshape(-1, final_hidden.shape[-1])
    targets = labels.reshape(-1)
    rows = (targets != ignore_index).nonzero().squeeze(1)

    def chunk_sum(outs: list[Tensor], idx: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(outs[0].float(), targets.index_select(0, idx), reduction="sum")

    return chunked_rows_sum([Stream(flat, lm_head)], rows, chunk_sum, chunk_size) / max(rows.numel(), 1)
