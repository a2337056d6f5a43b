"""Tiny synthetic ``DistillBatch``es for tests: right shapes, real masks, no models.

Test-only: the package never imports this.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.objective import ModelShape


def length_mask(lengths: Sequence[int], seq: int) -> Tensor:
    """``[B, T]`` float mask with ones on the first ``lengths[b]`` positions."""
    return (torch.arange(seq)[None, :] < torch.tensor(list(lengths))[:, None]).float()


def fake_attentions(batch: int, heads: int, seq: int, token_mask: Tensor, layers: int, gen: torch.Generator,
                    requires_grad: bool) -> tuple[Tensor, ...]:
    """Causal attention probabilities with zero mass on padded keys; rows with no valid key are NaN,
    the worst thing an SDPA kernel returns for a fully masked row."""
    out = []
    causal = torch.ones(seq, seq).tril().bool()
    keys = token_mask.bool()[:, None, None, :] & causal[None, None]
    for _ in range(layers):
        scores = torch.randn(batch, heads, seq, seq, generator=gen)
        scores = scores.masked_fill(~keys, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # NaN where a row has no valid key
        out.append(probs.requires_grad_(requires_grad))
    return tuple(out)


def fake_view(shape: ModelShape, batch: int, seq: int, vocab: int, token_mask: Tensor, gen: torch.Generator,
              requires_grad: bool) -> ModelView:
    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=gen).requires_grad_(requires_grad)

    return ModelView(
        logits=randn(batch, seq, vocab),
        hidden_states=tuple(randn(batch, seq, shape.hidden_size) for _ in range(shape.num_layers + 1)),
        attentions=fake_attentions(batch, shape.num_heads, seq, token_mask, shape.num_layers, gen, requires_grad),
    )


def fake_batch(
    student: ModelShape,
    teacher: ModelShape,
    lengths: Sequence[int] = (6, 3),
    seq: int = 6,
    vocab: int = 11,
    prompt: int = 1,
    seed: int = 0,
) -> DistillBatch:
    """Student tensors are leaves with ``requires_grad``; the response mask drops ``prompt`` positions."""
    gen = torch.Generator().manual_seed(seed)
    token_mask = length_mask(lengths, seq)
    response_mask = token_mask.clone()
    response_mask[:, :prompt] = 0
    return DistillBatch(
        student=fake_view(student, len(lengths), seq, vocab, token_mask, gen, True),
        teacher=fake_view(teacher, len(lengths), seq, vocab, token_mask, gen, False),
        token_mask=token_mask,
        response_mask=response_mask,
    )
