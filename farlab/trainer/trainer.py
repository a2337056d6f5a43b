"""The Trainer subclass: CE + alpha * distillation, per-component logging, atomic checkpoints.

The Trainer gives us gradient accumulation, AMP, the LR schedule, W&B reporting, progress bars,
RNG/optimizer checkpointing and data-order resume; farlab only overrides what distillation changes.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer

from farlab.models.pair import DistillationModule
from farlab.trainer import checkpoints

EXTRAS_FILE = "farlab_extras.safetensors"  # projections and a co-trained teacher, beside the student


class DistillationTrainer(Trainer):
    def __init__(self, *args: Any, teacher_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_learning_rate = teacher_learning_rate
        self._part_sums: dict[str, float] = defaultdict(float)
        self._part_count = 0
        self.component_totals: dict[str, float] = defaultdict(float)
        self.component_count = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0

    @property
    def pair(self) -> DistillationModule:
        return self.accelerator.unwrap_model(self.model)

    # ---- loss -------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        total, parts = model(**inputs, step=self.state.global_step, max_steps=max(self.state.max_steps, 1))
        for key, value in parts.items():
            self._part_sums[key] += value
        self._part_count += 1
        if model.training:
            self.tokens_seen += int(inputs["attention_mask"].sum())
        return (total, None) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._part_count:
            for key, value in self._part_sums.items():
                mean = value / self._part_count
                logs[f"loss/{key}"] = mean
                self.component_totals[key] += mean
            self.component_count += 1
            self._part_sums.clear()
            self._part_count = 0
        super().log(logs, start_time)

    def component_means(self) -> dict[str, float]:
        """Mean of each logged loss component over the run's logging steps (for metrics.json)."""
        n = max(self.component_count, 1)
        return {key: value / n for key, value in sorted(self.component_totals.items())}

    # ---- optimizer --------------------------------------------------------------------------------

    def create_optimizer(self, model=None):  # type: ignore[override]
        """Student and projections at the run's LR; a co-trained teacher at its own LR when set."""
        if self.optimizer is None and self.teacher_learning_rate is not None and self.pair.teacher_trainable:
            teacher_ids = {id(p) for p in self.pair.teacher.parameters()}
            rest = [p for p in self.pair.parameters() if p.requires_grad and id(p) not in teacher_ids]
            teacher = [p for p in self.pair.teacher.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(
                [
                    {"params": rest, "lr": self.args.learning_rate},
                    {"params": teacher, "lr": self.teacher_learning_rate},
                ],
                weight_decay=self.args.weight_decay,
            )
            return self.optimizer
        return super().create_optimizer(model)

    # ---- saving and loading -----------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint's root is a loadable student; extras (projections, co-trained teacher) sit beside it."""
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        pair = self.pair
        pair.student.save_pretrained(output_dir)
        extras = trainable_extras(pair)
        if extras:
            safetensors.torch.save_file(extras, os.path.join(output_dir, EXTRAS_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:  # type: ignore[override]
        load_pair_weights(self.pair, Path(resume_from_checkpoint))

    def _save_checkpoint(self, model, trial) -> None:  # type: ignore[override]
        """Let the Trainer write into a staging dir, then publish it atomically and rotate."""
        run_dir = Path(self.args.output_dir)
        staging_root = run_dir / checkpoints.STAGING_DIR
        name = f"checkpoint-{self.state.global_step}"
        keep = self.args.save_total_limit
        self.args.output_dir, self.args.save_total_limit = str(staging_root), None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = str(run_dir), keep
        checkpoints.publish(staging_root / name, run_dir / name)
        checkpoints.rotate(run_dir, keep or 0)

    # ---- timing -----------------------------------------------------------------------------------

    def train(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        start = time.perf_counter()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.train_seconds += time.perf_counter() - start


def trainable_extras(pair: DistillationModule) -> dict[str, torch.Tensor]:
    """Everything trainable that is not the student: the objective's projections, a co-trained teacher."""
    extras = {f"objective.{k}": v.detach().contiguous() for k, v in pair.objective.state_dict().items()}
    if pair.teacher_trainable:
        extras.update({f"teacher.{k}": v.detach().contiguous() for k, v in pair.teacher.state_dict().items()})
    return extras


def load_pair_weights(pair: DistillationModule, checkpoint: Path) -> None:
    """Restore student (and extras) from a farlab checkpoint, refusing missing or unexpected keys."""
    student_file = checkpoint / "model.safetensors"
    if not student_file.is_file():
        raise FileNotFoundError(f"{checkpoint} has no model.safetensors; not a farlab checkpoint")
    state = safetensors.torch.load_file(str(student_file))
    missing, unexpected = pair.student.load_state_dict(state, strict=False)
    tied = set(getattr(pair.student, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the student: missing {missing}, unexpected {unexpected}")
    extras_file = checkpoint / EXTRAS_FILE
    if extras_file.is_file():
        extras = safetensors.torch.load_file(str(extras_file))
        objective = {k.removeprefix("objective."): v for k, v in extras.items() if k.startswith("objective.")}
        pair.objective.load_state_dict(objective)
        teacher = {k.removeprefix("teacher."): v for k, v in extras.items() if k.startswith("teacher.")}
        if teacher and pair.teacher is not None:
            pair.teacher.load_state_dict(teacher)
