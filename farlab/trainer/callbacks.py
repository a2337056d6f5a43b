"""Trainer callbacks of a farlab run (the graceful-stop callback lives in :mod:`farlab.trainer.signals`).

:class:`PeakMetrics` evaluates the student every ``train.eval_steps`` optimizer steps with farlab's direct eval
loop (no nested Trainer) and keeps the best value of each metric and the step it was reached at, for
``metrics.json["best"]``. Its state travels in the checkpoint (``checkpoint_state``/``load_checkpoint_state``,
saved by :class:`~farlab.trainer.trainer.DistillationTrainer`), so a preempted and resumed run reports the same
peaks as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from farlab.eval.calibration import CALIBRATION_KEYS
from farlab.eval.metrics import lower_is_better

log = logging.getLogger(__name__)

Evaluate = Callable[[], Mapping[str, Any]]
LogFn = Callable[[dict[str, float]], None]
# Called after each periodic evaluation with (metrics, step, args, control), e.g. early stopping.
Observer = Callable[[Mapping[str, Any], int, TrainingArguments, TrainerControl], None]


class PeakMetrics(TrainerCallback):
    """Periodic student evaluation; best value and step per metric.

    evaluate: returns ``{metric: value}`` for the current student (e.g. ``farlab.eval.loop.evaluate_model``).
    eval_steps: evaluate every this many optimizer steps; None or 0 = only what :meth:`record` is given
        (the post-training evaluation).
    log_fn: where eval metrics go besides the peaks, normally ``trainer.log`` (W&B, TensorBoard, log_history).
    observers: called after each periodic evaluation (:mod:`farlab.trainer.early_stop` appends itself).
    """

    def __init__(self, evaluate: Evaluate, eval_steps: int | None = None, log_fn: LogFn | None = None) -> None:
        if eval_steps is not None and eval_steps < 0:
            raise ValueError(f"eval_steps={eval_steps} must be >= 1, or null/0 to evaluate only at the end")
        self.evaluate = evaluate
        self.eval_steps = eval_steps or None
        self.log_fn = log_fn
        self.best: dict[str, dict[str, float | int]] = {}
        self.last_step: int | None = None
        self.observers: list[Observer] = []

    def record(self, metrics: Mapping[str, Any], step: int) -> None:
        """Fold one evaluation into the peaks (ties keep the earlier step).

        Peaks are kept for the task metrics only: calibration entries (ECE, NLL, confidence, per-class dicts)
        are diagnostics with no single better direction and are logged, not peaked."""
        for name, value in metrics.items():
            if name in CALIBRATION_KEYS:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            old = self.best.get(name)
            lower = lower_is_better(name)
            if old is None or (value < old["value"] if lower else value > old["value"]):
                self.best[name] = {"value": float(value), "step": int(step)}
        self.last_step = step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        step = state.global_step
        if not self.eval_steps or step % self.eval_steps or step == self.last_step:
            return control
        # fork_rng: the eval DataLoader draws from the global RNG; without this, evaluating would change the
        # dropout stream of the following steps, so eval_steps would change the trained model.
        with torch.random.fork_rng(devices=[]):
            metrics = dict(self.evaluate())
        self.record(metrics, step)
        if self.log_fn is not None:
            # trainer.log() -> on_log resets control.should_log, which would drop this step's training-loss log
            should_log = control.should_log
            self.log_fn({f"eval_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            control.should_log = should_log
        else:
            log.info("step %d eval: %s", step, metrics)
        for observe in self.observers:
            observe(metrics, step, args, control)
        return control

    # ---- checkpointed state (see DistillationTrainer._save_checkpoint) --------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        return {"best": self.best, "last_step": self.last_step}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.best = {k: dict(v) for k, v in (state.get("best") or {}).items()}
        self.last_step = state.get("last_step")
