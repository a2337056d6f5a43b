"""Fine-tuning with CE alone, by the same Trainer the students use: how SFT teachers are made.

The teacher store (farlab.teachers) decides *when* a teacher must be trained; this module is *how*, handed to
it as a plain function so the teachers layer never imports the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from farlab.data.base import TaskData
from farlab.losses.objective import build_objective
from farlab.models.lora import merged
from farlab.trainer.fit import FitSettings, make_trainer
from farlab.trainer.pair import DistillationModule


def sft_fine_tuner(recipe: Any, train_cfg: Any, seed: int) -> Callable[[PreTrainedModel, TaskData, Any, Path], None]:
    """A ``FineTune`` for :class:`farlab.teachers.strategies.TeacherContext`: the teacher recipe's knobs plus
    the run's logging settings; no checkpoints (a teacher is trained in one go, then published atomically)."""

    def fine_tune(model: PreTrainedModel, data: TaskData, tokenizer: Any, out_dir: Path) -> None:
        objective = build_objective({"name": "ce", "alpha": 0.0})
        pair = DistillationModule(model, None, objective, kind=data.kind)
        settings = FitSettings.from_config(recipe, logging_steps=train_cfg.logging_steps,
                                           progress_bar=train_cfg.progress_bar, save_checkpoints=False)
        trainer = make_trainer(pair, data, tokenizer, out_dir / "run", settings, seed)
        trainer.train()
        merged(model).save_pretrained(out_dir)  # a LoRA-tuned teacher (model.teacher.lora.r > 0): adapters folded in
        tokenizer.save_pretrained(out_dir)

    return fine_tune
