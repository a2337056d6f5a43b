"""Feature (hidden-state) distillation over mapped layer pairs.

``mse`` is FitNets (projected student vs teacher, mean squared error over the hidden dim); ``cosine``
is DistilBERT's ``1 - cos`` alignment. Each pair owns its projection (``nn.ModuleList``), so the
projections are trained with the student and saved in the objective's ``state_dict``. Values are
averaged over the ``token_mask`` positions, then over pairs (so the scale does not grow with the
number of pairs). Teacher tensors are used as given: the caller detaches a frozen teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from farlab.losses.base import COMPONENT_TYPES, BuildContext, DistillBatch, LossComponent
from farlab.losses.divergences import masked_mean, upcast
from farlab.registry import Registry

FEATURE_FNS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("feature loss fn")
FEATURE_FNS.register("mse", lambda s, t: (s - t).pow(2).mean(-1))
FEATURE_FNS.register("cosine", lambda s, t: 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8))


@COMPONENT_TYPES.register("feature")
class FeatureLoss(LossComponent):
    """Mean over layer pairs of ``masked_mean(fn(proj(h_s[i]), h_t[j]), token_mask)``."""

    kind, letter, fns, default_fn = "feature", "F", FEATURE_FNS, "mse"
    needs_hidden_states = uses_layer_map = True

    @classmethod
    def from_config(cls, comp: Any, ctx: BuildContext) -> FeatureLoss:
        pairs = ctx.layer_pairs()
        return cls(comp.fn, pairs, [ctx.projection() for _ in pairs])

    def __init__(self, fn: str, pairs: Sequence[tuple[int, int]], projections: Sequence[nn.Module]) -> None:
        super().__init__()
        self.fn_name = fn
        self.fn = FEATURE_FNS.get(fn, context="component 'feature'")
        if len(pairs) != len(projections) or not pairs:
            raise ValueError(f"feature loss needs one projection per layer pair; got {len(pairs)} pairs, "
                             f"{len(projections)} projections")
        self.pairs = [(int(s), int(t)) for s, t in pairs]
        self.projections = nn.ModuleList(projections)

    def extra_repr(self) -> str:
        return f"fn={self.fn_name}, pairs={self.pairs}"

    def forward(self, batch: DistillBatch) -> Tensor:
        hs, ht = batch.student.hidden_states, batch.teacher.hidden_states
        if hs is None or ht is None:
            raise ValueError("FeatureLoss needs hidden_states from both models (output_hidden_states=True)")
        total = None
        for (i, j), proj in zip(self.pairs, self.projections):
            if i >= len(hs) or j >= len(ht):
                raise ValueError(
                    f"layer pair ({i}, {j}) out of range: student has hidden_states 0..{len(hs) - 1}, "
                    f"teacher 0..{len(ht) - 1}"
                )
            s, t = upcast(proj(hs[i])), upcast(ht[j])
            if s.shape != t.shape:
                raise ValueError(
                    f"layer pair ({i}, {j}): projected student {tuple(s.shape)} != teacher {tuple(t.shape)}"
                )
            term = masked_mean(self.fn(s, t), batch.token_mask)
            total = term if total is None else total + term
        assert total is not None
        return total / len(self.pairs)
