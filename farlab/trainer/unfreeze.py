"""Progressive unfreezing: the student's lower blocks start frozen and thaw top-down on a step schedule.

``train.unfreeze.frozen_blocks=K`` freezes transformer blocks ``0 .. K-1`` (the lowest K) at step 0, and with
``train.unfreeze.every=N`` the top-most still-frozen block thaws every N optimizer steps: after ``s`` completed
steps the lowest ``max(0, K - s // N)`` blocks are frozen (ULMFiT's order: the most general layers train last).
With ``embeddings`` (the default) the embeddings stay frozen as long as any block is. The task head, the pooler,
the final norm and anything outside the numbered blocks are never frozen; parameters that were not trainable to
begin with (a LoRA student's base weights) are never touched.

The schedule is a pure function of the step, so a resumed run needs no saved state: the callback sets
``requires_grad`` from ``state.global_step`` at every step begin.

Why ``requires_grad`` and not gradient masking: the Trainer builds its optimizer once, before the first callback
runs, over the parameters that require grad then; at that point all of them still do, so frozen parameters are in
its groups and take part again once thawed. A frozen parameter gets no gradient (``.grad`` stays None after the
Trainer's ``zero_grad``), and torch's optimizers skip a parameter without a gradient entirely: no update, no weight
decay, no moment update. Autograd also does no backward work below the lowest trainable block.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from farlab.errors import ConfigError
from farlab.models.loading import _BLOCK_KEY  # the one pattern for "<...>.layer|layers|h.<N>.<...>" block names

log = logging.getLogger(__name__)

_EMBEDDING = re.compile(r"(^|\.)(embeddings|embed_tokens|embed_positions|wte|wpe)(\.|$)")


def block_index(name: str) -> int | None:
    """The transformer block a parameter belongs to (``bert.encoder.layer.3.output.dense.weight`` -> 3), or None."""
    match = _BLOCK_KEY.match(name)
    return int(match[2]) if match else None


def is_embedding(name: str) -> bool:
    """Token/position embedding parameters (bert ``embeddings.*``, llama ``embed_tokens``, gpt2 ``wte``/``wpe``)."""
    return _EMBEDDING.search(name) is not None


def frozen_block_count(step: int, frozen_blocks: int, every: int | None) -> int:
    """How many of the lowest blocks are frozen after ``step`` completed optimizer steps."""
    if frozen_blocks <= 0:
        return 0
    if every is None:
        return frozen_blocks
    return max(0, frozen_blocks - step // every)


class ProgressiveUnfreeze(TrainerCallback):
    """Sets ``requires_grad`` of ``model``'s trainable parameters from the step, at every step begin."""

    def __init__(self, model: nn.Module, frozen_blocks: int, every: int | None = None, embeddings: bool = True) -> None:
        if frozen_blocks < 0 or (every is not None and every < 1):
            raise ConfigError(
                f"train.unfreeze needs frozen_blocks >= 0 and every >= 1 or null; got {frozen_blocks}, {every}"
            )
        names = [name for name, _ in model.named_parameters()]
        depth = 1 + max((i for i in map(block_index, names) if i is not None), default=-1)
        if frozen_blocks > depth:
            raise ConfigError(
                f"train.unfreeze.frozen_blocks={frozen_blocks} but the student has {depth} transformer blocks "
                "(named '<...>.layer|layers|h.<N>.<...>')"
            )
        self.frozen_blocks, self.every, self.embeddings = frozen_blocks, every, embeddings
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}  # what training may touch
        self._block = {name: block_index(name) for name in self.params}
        self._embedding = {name: embeddings and is_embedding(name) for name in self.params}
        self._frozen_count: int | None = None

    def frozen_names(self, step: int) -> set[str]:
        """Names of the parameters frozen after ``step`` completed optimizer steps."""
        k = frozen_block_count(step, self.frozen_blocks, self.every)
        return {
            name for name in self.params
            if (self._block[name] is not None and self._block[name] < k) or (k > 0 and self._embedding[name])
        }

    def apply(self, step: int) -> None:
        frozen = self.frozen_names(step)
        for name, param in self.params.items():
            param.requires_grad_(name not in frozen)
        k = frozen_block_count(step, self.frozen_blocks, self.every)
        if k != self._frozen_count:
            log.info("step %d: lowest %d block(s)%s frozen", step, k, " and the embeddings" if k and self.embeddings
                     else "")
            self._frozen_count = k

    def restore(self) -> None:
        """Everything trainable again, as before training (the exported student has no frozen flags)."""
        for param in self.params.values():
            param.requires_grad_(True)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.apply(state.global_step)
        return control

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.apply(state.global_step)
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.restore()
        return control
