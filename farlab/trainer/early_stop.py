"""Early stopping on the periodic evaluation: stop when the primary metric has not improved for ``patience`` evals.

It watches the evaluations :class:`~farlab.trainer.callbacks.PeakMetrics` runs every ``train.eval_steps`` steps
(no evaluation of its own), on the task's primary metric, in the direction :func:`farlab.eval.metrics.lower_is_better`
gives; "improved" means strictly better than every earlier evaluation (ties do not reset the count, as in the
peaks). When it stops, it asks the Trainer to save a checkpoint at that step, so the decision is on disk.

Across resume: its counters travel in the checkpoint (``checkpoint_state``), so a run preempted mid-patience
stops at the same step as an uninterrupted one; and a run resumed from the checkpoint it stopped at does not
train further (:meth:`DistillationTrainer.train` asks ``stopped_training``).

The exported student is the model at the stopping step, not at the best step (the best step may have no
checkpoint); ``metrics.json`` records both steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainingArguments

from farlab.eval.metrics import lower_is_better
from farlab.trainer.callbacks import PeakMetrics

log = logging.getLogger(__name__)


class EarlyStopping(TrainerCallback):
    """Counts periodic evals without a new best ``metric``; stops training after ``patience`` of them."""

    def __init__(self, peak: PeakMetrics, metric: str, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"train.early_stopping.patience={patience} must be >= 1 (or null: off)")
        if not peak.eval_steps:
            raise ValueError("early stopping needs the periodic evaluation: set train.eval_steps >= 1")
        self.metric, self.patience, self.lower = metric, patience, lower_is_better(metric)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_at: int | None = None
        peak.observers.append(self.observe)

    def observe(self, metrics: Mapping[str, Any], step: int, args: TrainingArguments, control: TrainerControl) -> None:
        """One periodic evaluation at ``step`` (called by PeakMetrics right after it evaluated)."""
        if self.stopped_at is not None:
            return
        value = metrics.get(self.metric)
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if finite and (self.best_value is None or (value < self.best_value if self.lower else value > self.best_value)):
            self.best_value, self.best_step, self.bad_evals = float(value), step, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped_at = step
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
            log.warning("early stopping at step %d: %s has not improved on %s (step %s) for %d evaluations",
                        step, self.metric, self.best_value, self.best_step, self.bad_evals)

    def stopped_training(self) -> bool:
        return self.stopped_at is not None

    def report(self) -> dict[str, Any]:
        """For ``metrics.json["train"]``."""
        return {
            "early_stopped_at_step": self.stopped_at,
            "early_stopping": {"metric": self.metric, "patience": self.patience, "best_value": self.best_value,
                               "best_step": self.best_step},
        }

    # ---- checkpointed state (see DistillationTrainer._save_checkpoint) --------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "stopped_at": self.stopped_at}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_step = state.get("best_value"), state.get("best_step")
        self.bad_evals, self.stopped_at = int(state.get("bad_evals", 0)), state.get("stopped_at")
