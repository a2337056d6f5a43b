"""Turn farlab's train settings into a configured :class:`DistillationTrainer`.

Used by the main run and by the SFT-teacher store, so a teacher is fine-tuned by exactly the same
machinery (and the same bugs fixes) as a student.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback, TrainingArguments

from farlab.config import TrainConfig
from farlab.data.base import TaskData
from farlab.registry import unknown_choice_message
from farlab.trainer.pair import DistillationModule
from farlab.trainer.parallel import fsdp_arguments
from farlab.trainer.spike_guard import SpikeGuard
from farlab.trainer.trainer import DistillationTrainer
from farlab.trainer.unfreeze import ProgressiveUnfreeze

log = logging.getLogger(__name__)


@dataclass
class FitSettings(TrainConfig):
    """A run's train settings plus what only the running process knows (loggers, run name, ...).

    The SFT-teacher recipe maps onto it too: :meth:`from_config` takes the fields a node has.
    """

    report_to: tuple[str, ...] = ()
    run_name: str | None = None
    save_checkpoints: bool = True
    teacher_learning_rate: float | None = None

    @classmethod
    def from_config(cls, node: Any, **overrides: Any) -> FitSettings:
        fields = {k: node[k] for k in cls.__dataclass_fields__ if k in node}
        fields = {k: OmegaConf.to_object(v) if isinstance(v, DictConfig) else v for k, v in fields.items()}
        fields.update(overrides)
        return cls(**fields)


WANDB_MODES = ("disabled", "offline", "online")


def train_problems(train_cfg: Any, wandb_cfg: Any) -> list[str]:
    """Model-free checks of ``train`` and ``wandb``."""
    tr, problems = train_cfg, []
    if tr.batch_size < 1:
        problems.append(f"train.batch_size={tr.batch_size} must be >= 1")
    if tr.learning_rate <= 0:
        problems.append(f"train.learning_rate={tr.learning_rate} must be > 0")
    if not (tr.epochs > 0 or tr.max_steps > 0):
        problems.append("set train.epochs > 0 or train.max_steps > 0")
    if tr.grad_accum_steps < 1:
        problems.append(f"train.grad_accum_steps={tr.grad_accum_steps} must be >= 1")
    if tr.eval_steps is not None and tr.eval_steps < 0:
        problems.append(f"train.eval_steps={tr.eval_steps} must be >= 1 (or null/0: evaluate only after training)")
    if tr.bf16 and tr.fp16:
        problems.append("train.bf16 and train.fp16 are mutually exclusive")
    problems += control_problems(tr)
    if wandb_cfg.mode not in WANDB_MODES:
        problems.append(unknown_choice_message("wandb.mode", wandb_cfg.mode, list(WANDB_MODES)))
    return problems


def control_problems(tr: Any) -> list[str]:
    """``train.unfreeze``, ``train.early_stopping`` and ``train.spike_guard`` (the training controls)."""
    problems = []
    unfreeze, patience, guard = tr.unfreeze, tr.early_stopping.patience, tr.spike_guard
    if unfreeze.frozen_blocks < 0:
        problems.append(f"train.unfreeze.frozen_blocks={unfreeze.frozen_blocks} must be >= 0 (0 = off)")
    if unfreeze.every is not None and unfreeze.every < 1:
        problems.append(f"train.unfreeze.every={unfreeze.every} must be >= 1 optimizer steps, or null "
                        "(the blocks stay frozen for the whole run)")
    if patience is not None and patience < 1:
        problems.append(f"train.early_stopping.patience={patience} must be >= 1 evaluations, or null (off)")
    if patience is not None and not tr.eval_steps:
        problems.append(f"train.early_stopping.patience={patience} needs the periodic evaluation it watches: "
                        f"set train.eval_steps >= 1 (got {tr.eval_steps})")
    if guard.factor is not None and not guard.factor > 1:
        problems.append(f"train.spike_guard.factor={guard.factor} must be > 1 (a multiple of the running mean), "
                        "or null (off)")
    if guard.warmup_steps < 0:
        problems.append(f"train.spike_guard.warmup_steps={guard.warmup_steps} must be >= 0")
    if not 0 <= guard.decay < 1:
        problems.append(f"train.spike_guard.decay={guard.decay} must be in [0, 1)")
    return problems


def training_controls(pair: DistillationModule, settings: FitSettings) -> list[TrainerCallback]:
    """The callbacks ``train.unfreeze`` and ``train.spike_guard`` ask for (early stopping needs the periodic
    eval and the task's metric: ``farlab.train.fit`` adds it)."""
    controls: list[TrainerCallback] = []
    unfreeze, guard = settings.unfreeze, settings.spike_guard
    if unfreeze.frozen_blocks > 0:
        controls.append(ProgressiveUnfreeze(pair.student, unfreeze.frozen_blocks, unfreeze.every, unfreeze.embeddings))
    if guard.factor is not None:
        controls.append(SpikeGuard(guard.factor, guard.warmup_steps, guard.decay))
    return controls


def make_trainer(
    pair: DistillationModule,
    data: TaskData,
    tokenizer: Any,
    output_dir: Path,
    settings: FitSettings,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
) -> DistillationTrainer:
    if settings.gradient_checkpointing:
        pair.student.gradient_checkpointing_enable()
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the total steps
        gradient_accumulation_steps=settings.grad_accum_steps,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_checkpoints else "no",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_strategy="no",  # evaluation is farlab's direct loop, not a nested Trainer
        bf16=settings.bf16,
        fp16=settings.fp16,
        seed=seed,
        data_seed=seed,
        report_to=list(settings.report_to) or "none",
        run_name=settings.run_name,
        disable_tqdm=not settings.progress_bar,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        **fsdp_arguments(settings.fsdp, pair.student, pair.teacher),
    )
    return DistillationTrainer(
        model=pair,
        args=args,
        train_dataset=data.train,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=[*(callbacks or []), *training_controls(pair, settings)],
        teacher_learning_rate=settings.teacher_learning_rate,
    )


def configure_wandb(wandb_cfg: Any, run_dir: Path) -> tuple[str, ...]:
    """Point the Trainer's W&B integration at this run (``report_to``); offline mode needs no login.

    The integration reads its settings from the environment, so the config's values are exported there;
    the run's files go under ``<run dir>/wandb`` (``wandb sync`` uploads an offline run later).
    """
    if wandb_cfg.mode == "disabled":
        return ()
    os.environ["WANDB_MODE"] = wandb_cfg.mode
    os.environ["WANDB_PROJECT"] = wandb_cfg.project
    os.environ["WANDB_DIR"] = str(run_dir)
    if wandb_cfg.entity:
        os.environ["WANDB_ENTITY"] = wandb_cfg.entity
    if wandb_cfg.tags:
        os.environ["WANDB_TAGS"] = ",".join(wandb_cfg.tags)
    return ("wandb",)


def finish_wandb(metrics: dict[str, Any]) -> None:
    """Put the run's pre/post metrics, extra eval splits and transfer gap in the W&B summary and close the run.

    Nested entries (per-class dicts, ``extra_eval``) become ``/``-joined keys, e.g. ``post/student/ece``,
    ``pre/student/per_class_recall/<label>``, ``extra_eval/<split>/post/student/accuracy``; None values are left out.

    The Trainer leaves its W&B run open after training; closing it flushes an offline run to disk
    and keeps the jobs of an in-process sweep from logging into one run.
    """
    import wandb

    if wandb.run is None:
        return
    summary = _flat_summary({"pre": metrics["pre"], "post": metrics["post"], "extra_eval": metrics.get("extra_eval")})
    summary.update({f"transfer_gap/{k}": v for k, v in metrics["transfer_gap"].items() if v is not None})
    wandb.run.summary.update(summary)
    wandb.finish()


def _flat_summary(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a/b/c": leaf}``, None leaves dropped (e.g. the recall of a class absent from the split)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat_summary(value, f"{prefix}{key}/").items()}
    return {} if tree is None else {prefix.rstrip("/"): tree}


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
