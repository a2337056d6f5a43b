"""One model forward, turned into the :class:`~farlab.losses.base.ModelView` the losses read.

Shared by the student side of :class:`~farlab.trainer.pair.DistillationModule` and the in-process
teacher backend, so both models of a pair are always run the same way.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from farlab.data.context import TEACHER_PREFIX
from farlab.losses.base import ModelView
from farlab.losses.response import chunked_lm_cross_entropy

BATCH_METADATA = ("example_id", "transfer")  # bookkeeping keys, never model inputs (transfer: 1 = no gold label)


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch without farlab's bookkeeping keys (models never see ``example_id``) and without the teacher's own
    sequence (``teacher_*``, context distillation: :func:`farlab.data.context.teacher_side` selects that one)."""
    return {k: v for k, v in batch.items() if k not in BATCH_METADATA and not k.startswith(TEACHER_PREFIX)}


@functools.lru_cache(maxsize=32)
def _forward_params(forward: Any) -> frozenset[str] | None:
    params = inspect.signature(forward).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None  # takes anything
    return frozenset(params)


def accepted_inputs(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch minus keys the model's forward does not take (e.g. DistilBERT has no token_type_ids)."""
    accepted = _forward_params(type(model).forward)
    return batch if accepted is None else {k: v for k, v in batch.items() if k in accepted}


def output_view(out: Any, detach: bool = False) -> ModelView:
    maybe = (lambda t: t.detach()) if detach else (lambda t: t)
    hidden = tuple(maybe(h) for h in out.hidden_states) if out.hidden_states else None
    attn = tuple(maybe(a) for a in out.attentions) if getattr(out, "attentions", None) else None
    return ModelView(logits=maybe(out.logits), hidden_states=hidden, attentions=attn)


def run_model(
    model: nn.Module, batch: dict[str, Tensor], flags: dict[str, bool], chunk_size: int | None = None
) -> tuple[Tensor | None, ModelView]:
    """``(task loss, view)`` of one forward.

    With ``chunk_size`` (causal LMs with a chunked response loss) the output head is never applied
    to the whole batch: the view carries ``final_hidden`` + ``lm_head`` and the CE is computed over
    target rows ``chunk_size`` at a time, so the [B, T, V] logits never exist.
    """
    inputs = accepted_inputs(model, model_inputs(batch))
    if chunk_size is None:
        out = model(**inputs, **flags)
        return getattr(out, "loss", None), output_view(out)
    decoder = model.get_decoder()
    labels = inputs.pop("labels", None)
    out = decoder(**accepted_inputs(decoder, inputs), **flags)
    hidden, head = out.last_hidden_state, model.get_output_embeddings()
    loss = None
    if labels is not None:  # the logit at t predicts token t + 1, as in the models' own CE
        shifted = torch.full_like(labels, -100)
        shifted[:, :-1] = labels[:, 1:]
        loss = chunked_lm_cross_entropy(hidden, head, shifted, chunk_size)
    attn = tuple(out.attentions) if getattr(out, "attentions", None) else None
    return loss, ModelView(
        hidden_states=tuple(out.hidden_states) if out.hidden_states else None,
        attentions=attn,
        final_hidden=hidden,
        lm_head=head,
    )


@torch.no_grad()
def detached_lm_ce(view: ModelView, labels: Tensor, chunk_size: int | None = None) -> Tensor | None:
    """The causal-LM CE the model itself would report for ``labels`` (mean over targets, the logit at t predicting
    token t + 1), without grad: from the view's logits over the target rows only, or chunk by chunk through
    ``final_hidden`` + ``lm_head``. None when the view has neither or its positions do not match ``labels``."""
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    if view.logits is not None and view.logits.shape[:2] == labels.shape:
        targets = shifted.reshape(-1)
        rows = (targets != -100).nonzero().squeeze(1)
        logits = view.logits.reshape(-1, view.logits.shape[-1]).index_select(0, rows)
        return torch.nn.functional.cross_entropy(logits.float(), targets.index_select(0, rows), reduction="sum") / max(
            rows.numel(), 1)
    if view.final_hidden is not None and view.lm_head is not None and view.final_hidden.shape[:2] == labels.shape:
        return chunked_lm_cross_entropy(view.final_hidden, view.lm_head, shifted, chunk_size or 1024)
    return None


def detached(view: ModelView) -> ModelView:
    """The same view with every tensor cut from the graph (distillation targets)."""
    cut = lambda t: None if t is None else t.detach()  # noqa: E731
    return ModelView(
        logits=cut(view.logits),
        hidden_states=tuple(h.detach() for h in view.hidden_states) if view.hidden_states else None,
        attentions=tuple(a.detach() for a in view.attentions) if view.attentions else None,
        topk=view.topk,
        lm_head=view.lm_head,
        final_hidden=cut(view.final_hidden),
    )
