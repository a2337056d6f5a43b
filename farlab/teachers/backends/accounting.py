"""Make teacher compute visible: teacher forwards per optimizer step (and GKD's on-policy fraction) in the logs.

A frozen teacher recomputed in every run of a sweep, or run on steps where its loss weight is 0, is wasted
compute that no loss curve shows. :class:`DistillationModule` counts forwards (a cache read counts 0); this
callback logs ``teacher_forwards_per_step`` (and ``on_policy_fraction`` when GKD is on) right after each
training-loss log (one more ``trainer.log`` call, so W&B and ``log_history`` get them), and :meth:`summary` gives the
run's values for ``metrics.json["train"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class TeacherComputeLog(TrainerCallback):
    def __init__(self, pair: Any, log_fn: Callable[[dict[str, float]], None] | None = None) -> None:
        self.pair, self.log_fn = pair, log_fn
        self._start = self._last = (0, 0, 0, 0)  # (step, forwards, batches, on-policy batches)

    def _now(self, step: int) -> tuple[int, int, int, int]:
        p = self.pair
        return step, p.teacher_forwards, p.batches_seen, p.on_policy_batches

    @staticmethod
    def _rates(a: tuple[int, int, int, int], b: tuple[int, int, int, int], on_policy: bool) -> dict[str, float]:
        steps, batches = b[0] - a[0], b[2] - a[2]
        out = {"teacher_forwards_per_step": (b[1] - a[1]) / steps if steps > 0 else 0.0}
        if on_policy:
            out["on_policy_fraction"] = (b[3] - a[3]) / batches if batches > 0 else 0.0
        return out

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._start = self._last = self._now(state.global_step)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: Any = None, **kw: Any
    ) -> TrainerControl:
        """Right after each training-loss log (so that entry stays first in log_history), a log of our rates."""
        if self.log_fn is None or not logs or "loss" not in logs or state.global_step <= self._last[0]:
            return control
        before, self._last = self._last, self._now(state.global_step)  # set first: log_fn re-enters on_log
        self.log_fn(self._rates(before, self._last, self.pair.on_policy is not None))
        return control

    def summary(self, global_step: int) -> dict[str, float]:
        """Rates over this training session (since the last resume)."""
        return self._rates(self._start, self._now(global_step), self.pair.on_policy is not None)
