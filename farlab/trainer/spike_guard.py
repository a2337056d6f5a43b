"""Divergence-spike guard: stop a run whose loss has blown up, before the blow-up reaches a checkpoint.

:class:`~farlab.trainer.trainer.DistillationTrainer` hands every training micro-batch's loss breakdown to
:meth:`SpikeGuard.on_train_loss` *before* its backward pass. The guard raises :class:`LossSpike` when

* the total loss or any logged part is not finite (from the first step), or
* ``ce``, ``teacher_ce`` or a component's ``<name>/raw`` value exceeds ``factor`` x its running mean, once
  ``warmup_steps`` optimizer steps are done. An exact 0 is "not computed" (a component whose schedule weight is
  0 at this step, CE on an on-policy GKD batch): it neither counts nor moves its mean.

The running mean is an exponential moving average over training micro-batches (``decay``; the first value
starts it). It travels in the checkpoint (``checkpoint_state``), so a resumed run judges with the same means.

Raising before ``backward`` means the bad batch never updates the weights, and the Trainer never reaches the
save of that step: the newest complete checkpoint stays what it was. ``farlab.train.execute`` records the run as
``failed`` with this message in ``run_metadata.json``; the run resumes from that checkpoint when launched again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from farlab.trainer.checkpoints import latest_complete_checkpoint


class LossSpike(RuntimeError):
    """A non-finite or spiking loss stopped the run; the message names the component, its value and the step."""


def watched_parts(parts: Mapping[str, float]) -> dict[str, float]:
    """The loss values the factor check compares with their means: CE terms and the components' raw values.

    An exact 0 means "not computed" (a component switched off by its schedule, CE on an on-policy GKD batch),
    so it is left out: it neither counts nor drags the mean down."""
    return {k: v for k, v in parts.items() if (k in ("ce", "teacher_ce") or k.endswith("/raw")) and v != 0.0}


class SpikeGuard(TrainerCallback):
    def __init__(self, factor: float, warmup_steps: int = 20, decay: float = 0.9) -> None:
        if not factor > 1.0 or warmup_steps < 0 or not 0.0 <= decay < 1.0:
            raise ValueError(
                f"spike guard needs factor > 1, warmup_steps >= 0 and 0 <= decay < 1; got {factor}, {warmup_steps}, "
                f"{decay}"
            )
        self.factor, self.warmup_steps, self.decay = factor, warmup_steps, decay
        self.means: dict[str, float] = {}
        self.output_dir: str | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.output_dir = args.output_dir
        return control

    def on_train_loss(self, total: float, parts: Mapping[str, float], global_step: int) -> None:
        """Check one training micro-batch of optimizer step ``global_step + 1``; raise :class:`LossSpike` or fold
        its values into the running means."""
        step = global_step + 1  # the step being computed, as the logs number it
        bad = [(k, v) for k, v in parts.items() if not math.isfinite(v)]
        if bad or not math.isfinite(total):
            name, value = bad[0] if bad else ("loss", total)
            raise LossSpike(f"non-finite loss at step {step}: {name} = {value} (total loss {total}); "
                            f"{self._where()}")
        watched = watched_parts(parts)
        if global_step >= self.warmup_steps:
            for name, value in watched.items():
                mean = self.means.get(name)
                if mean is not None and value > self.factor * mean:
                    raise LossSpike(
                        f"loss spike at step {step}: {name} = {value:.6g} is above train.spike_guard.factor="
                        f"{self.factor:g} x its running mean {mean:.6g}; {self._where()}"
                    )
        for name, value in watched.items():
            mean = self.means.get(name)
            self.means[name] = value if mean is None else self.decay * mean + (1.0 - self.decay) * value

    def _where(self) -> str:
        latest = latest_complete_checkpoint(self.output_dir) if self.output_dir else None
        return (f"the run stopped; the last complete checkpoint is {latest}" if latest is not None
                else "the run stopped before its first checkpoint")

    # ---- checkpointed state (see DistillationTrainer._save_checkpoint) --------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {"means": dict(self.means)}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.means = {k: float(v) for k, v in (state.get("means") or {}).items()}
