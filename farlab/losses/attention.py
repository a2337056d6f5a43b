"""Attention-map distillation: ``KL(teacher row || student row)`` for mapped blocks (TinyBERT/MiniLM).

Attention probabilities ``[B, H, T, T]`` are compared row by row (one query's distribution over keys).
When head counts match the KL is taken per head; otherwise both sides are averaged over heads first
(an average of distributions is a distribution). Rows of padded query positions are zeroed *before*
the math (``where``, so even NaN rows from fully-masked SDPA cannot leak) and excluded from the mean;
keys at padding already carry zero probability. Teacher maps are used as given (the caller detaches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from farlab.losses.base import COMPONENT_TYPES, BuildContext, DistillBatch, LossComponent
from farlab.losses.divergences import kl_probs, masked_mean, upcast
from farlab.registry import Registry

ATTENTION_FNS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("attention loss fn")
ATTENTION_FNS.register("kl", lambda student, teacher: kl_probs(teacher, student))


def attention_values(student: Tensor, teacher: Tensor, fn: str = "kl") -> Tensor:
    """Per-(head, query) values ``[B, H', T]``; ``H' = H`` if head counts match, else 1 (head-averaged)."""
    student, teacher = upcast(student), upcast(teacher)
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    return ATTENTION_FNS.get(fn)(student, teacher)


@COMPONENT_TYPES.register("attention")
class AttentionKL(LossComponent):
    """Mean over block pairs of the masked mean (heads x real query rows) of the row-wise KL."""

    kind, letter, fns, default_fn = "attention", "A", ATTENTION_FNS, "kl"
    needs_attentions = uses_layer_map = True

    @classmethod
    def from_config(cls, comp: Any, ctx: BuildContext) -> AttentionKL:
        pairs = [(s, t) for s, t in ctx.layer_pairs() if s >= 1 and t >= 1]  # embeddings have no attention map
        if not pairs:
            raise ValueError("attention loss: the layer map has no block pairs (only layer 0 = embeddings)")
        return cls(pairs, fn=comp.fn)

    def __init__(self, pairs: Sequence[tuple[int, int]], fn: str = "kl") -> None:
        super().__init__()
        ATTENTION_FNS.get(fn, context="component 'attention'")
        bad = [p for p in pairs if p[0] < 1 or p[1] < 1]
        if bad or not pairs:
            raise ValueError(f"attention pairs must be blocks (>= 1; 0 is the embeddings, which have no "
                             f"attention map); got {list(pairs)}")
        self.fn = fn
        self.pairs = [(int(s), int(t)) for s, t in pairs]

    def extra_repr(self) -> str:
        return f"fn={self.fn}, pairs={self.pairs}"

    def forward(self, batch: DistillBatch) -> Tensor:
        a_s, a_t = batch.student.attentions, batch.teacher.attentions
        if a_s is None or a_t is None:
            raise ValueError(
                "AttentionKL needs attentions from both models (output_attentions=True with an attention "
                "implementation that returns them, e.g. attn_implementation='eager')"
            )
        query_mask = batch.token_mask.to(torch.bool)[:, None, :, None]  # [B, 1, T, 1]
        total = None
        for i, j in self.pairs:
            if i > len(a_s) or j > len(a_t):
                raise ValueError(
                    f"block pair ({i}, {j}) out of range: student has blocks 1..{len(a_s)}, teacher 1..{len(a_t)}"
                )
            zero = a_s[i - 1].new_zeros(())
            s = torch.where(query_mask, a_s[i - 1], zero)
            t = torch.where(query_mask, a_t[j - 1], zero)
            values = attention_values(s, t, self.fn)  # [B, H', T]
            term = masked_mean(values, query_mask[..., 0].expand_as(values))
            total = term if total is None else total + term
        assert total is not None
        return total / len(self.pairs)
