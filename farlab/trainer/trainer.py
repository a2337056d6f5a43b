"""The Trainer subclass: CE + alpha * distillation, per-component logging, atomic checkpoints.

The Trainer gives us gradient accumulation, AMP, the LR schedule, W&B reporting, progress bars,
RNG/optimizer checkpointing and data-order resume; farlab only overrides what distillation changes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput

from farlab import distributed
from farlab.trainer import checkpoints
from farlab.trainer.pair import DistillationModule

EXTRAS_FILE = "farlab_extras.safetensors"  # projections and a co-trained teacher, beside the student
STATE_FILE = "farlab_state.json"  # run totals and callback state (e.g. peak metrics), for exact resume


class DistillationTrainer(Trainer):
    def __init__(self, *args: Any, teacher_learning_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_learning_rate = teacher_learning_rate
        self._part_sums: dict[str, float] = defaultdict(float)
        self._part_count = 0
        # Run totals over every training micro-batch, checkpointed in STATE_FILE so a resumed run reports
        # the same loss means as an uninterrupted one (the Trainer's own train_loss covers one train() call).
        self.component_totals: dict[str, float] = defaultdict(float)
        self.component_count = 0
        self.loss_total = 0.0
        self.tokens_seen = 0
        self._pending: dict[str, float] = defaultdict(float)  # this rank's totals since the last sync_totals()
        self.train_seconds = 0.0
        self._train_start: float | None = None

    @property
    def pair(self) -> DistillationModule:
        return self.accelerator.unwrap_model(self.model)

    # ---- loss -------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        total, parts = model(**inputs, step=self.state.global_step, max_steps=max(self.state.max_steps, 1))
        if model.training:
            loss = float(total.detach())
            watchers = [cb for cb in self.callback_handler.callbacks if hasattr(cb, "on_train_loss")]
            if watchers and distributed.world_size() > 1:  # every rank must take the same decision
                loss = distributed.summed([loss])[0] / distributed.world_size()
            for cb in watchers:  # e.g. the spike guard: may stop the run before backward
                cb.on_train_loss(loss, parts, self.state.global_step)
        for key, value in parts.items():
            self._part_sums[key] += value
        self._part_count += 1
        if model.training:
            self._count_batch(float(total.detach()), parts, int(inputs["attention_mask"].sum()))
        return (total, None) if return_outputs else total

    def _count_batch(self, loss: float, parts: dict[str, float], tokens: int) -> None:
        """Add a training micro-batch to the run totals: directly in one process (so a resumed run sums in the
        same order as an uninterrupted one), through this rank's pending sums across processes."""
        if distributed.world_size() == 1:
            self.tokens_seen += tokens
            for key, value in parts.items():
                self.component_totals[key] += value
            self.component_count += 1
            self.loss_total += loss
            return
        pending = self._pending
        pending["tokens"] += tokens
        for key, value in parts.items():
            pending[f"part/{key}"] += value
        pending["count"] += 1
        pending["loss"] += loss

    def sync_totals(self) -> None:
        """Fold the micro-batches since the last sync, summed over all ranks, into the run totals.

        Called by every rank at each checkpoint and at the end of training (the totals are then those of the
        global batch, and equal on every rank; in a single process this is a plain move)."""
        keys = sorted(self._pending)  # every rank runs the same loss, so the same keys
        sums = dict(zip(keys, distributed.summed([float(self._pending[k]) for k in keys]), strict=True))
        self._pending.clear()
        for key, value in sums.items():
            if key.startswith("part/"):
                self.component_totals[key.removeprefix("part/")] += value
        self.component_count += int(sums.get("count", 0))
        self.loss_total += sums.get("loss", 0.0)
        self.tokens_seen += int(sums.get("tokens", 0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._part_count:
            keys = sorted(self._part_sums)  # summed over ranks: the Trainer's "loss" is the global batch's too
            *sums, count = distributed.summed([self._part_sums[k] for k in keys] + [float(self._part_count)])
            for key, value in zip(keys, sums, strict=True):
                logs[f"loss/{key}"] = value / count
            self._part_sums.clear()
            self._part_count = 0
        super().log(logs, start_time)

    def component_means(self) -> dict[str, float]:
        """Mean of each loss component over all training micro-batches of the run (for metrics.json)."""
        n = max(self.component_count, 1)
        return {key: value / n for key, value in sorted(self.component_totals.items())}

    def callback_reports(self) -> dict[str, Any]:
        """What callbacks add to ``metrics.json["train"]`` (their ``report()``, e.g. the early-stopping step)."""
        out: dict[str, Any] = {}
        for cb in self.callback_handler.callbacks:
            if hasattr(cb, "report"):
                out.update(cb.report())
        return out

    def mean_loss(self) -> float | None:
        """Mean training loss over all micro-batches of the run, across resumes (None before any step)."""
        return self.loss_total / self.component_count if self.component_count else None

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
        self.sync_totals()
        if distributed.is_main():
            shutil.rmtree(staging_root / name, ignore_errors=True)  # leftovers of a write killed mid-way
        distributed.barrier()  # every rank writes its RNG state into the staging folder: clean it first
        self.args.output_dir, self.args.save_total_limit = str(staging_root), None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = str(run_dir), keep
        distributed.barrier()  # all ranks' files are in the staging folder
        if distributed.is_main():
            (staging_root / name / STATE_FILE).write_text(json.dumps(self._farlab_state(), indent=1))
            checkpoints.publish(staging_root / name, run_dir / name)
            checkpoints.rotate(run_dir, keep or 0)
        distributed.barrier()  # published before any rank goes on (a stop right after must find it complete)

    # ---- timing -----------------------------------------------------------------------------------

    def _farlab_state(self) -> dict[str, Any]:
        """What the Trainer's own checkpoint lacks: run totals, and callbacks' state (``checkpoint_state()``)."""
        elapsed = time.perf_counter() - self._train_start if self._train_start is not None else 0.0
        callbacks = {
            type(cb).__name__: cb.checkpoint_state()
            for cb in self.callback_handler.callbacks
            if hasattr(cb, "checkpoint_state")
        }
        totals = {
            "component_totals": dict(self.component_totals),
            "component_count": self.component_count,
            "loss_total": self.loss_total,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds + elapsed,
        }
        return {"totals": totals, "callbacks": callbacks}

    def _restore_farlab_state(self, checkpoint: Path) -> None:
        state_file = checkpoint / STATE_FILE
        if not state_file.is_file():  # a checkpoint from before STATE_FILE existed: totals restart
            return
        state = json.loads(state_file.read_text())
        totals = state["totals"]
        self.component_totals = defaultdict(float, totals["component_totals"])
        self.component_count = totals["component_count"]
        self.loss_total = totals["loss_total"]
        self.tokens_seen = totals["tokens_seen"]
        self.train_seconds = totals["train_seconds"]
        for cb in self.callback_handler.callbacks:
            saved = state["callbacks"].get(type(cb).__name__)
            if saved is not None and hasattr(cb, "load_checkpoint_state"):
                cb.load_checkpoint_state(saved)

    def _finished(self, checkpoint: Path) -> TrainOutput | None:
        """Load a checkpoint taken at the last step instead of training: the Trainer, resumed there, would run
        one extra step (at learning rate 0, but it still moves the loss totals and the step count). A checkpoint
        whose restored callbacks say training stopped (early stopping) is the last step too."""
        state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
        target = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
        stopped = any(cb.stopped_training() for cb in self.callback_handler.callbacks if hasattr(cb, "stopped_training"))
        if state.global_step < target and not stopped:
            return None
        self.state = state
        self._load_from_checkpoint(str(checkpoint))
        return TrainOutput(state.global_step, self.mean_loss() or 0.0, {})

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):  # type: ignore[override]
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self._restore_farlab_state(Path(resume_from_checkpoint))
            done = self._finished(Path(resume_from_checkpoint))
            if done is not None:
                return done
        self._train_start = time.perf_counter()
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
            self.sync_totals()
            return output
        finally:
            self.train_seconds += time.perf_counter() - self._train_start
            self._train_start = None


def trainable_extras(pair: DistillationModule) -> dict[str, torch.Tensor]:
    """Everything trainable that is not the student: the objective's projections, a co-trained teacher."""
    extras = {f"objective.{k}": v.detach().contiguous() for k, v in pair.objective.state_dict().items()}
    if pair.teacher_trainable:
        extras.update({f"teacher.{k}": v.detach().contiguous() for k, v in pair.teacher.state_dict().items()})
    return extras


def load_pair_weights(pair: DistillationModule, checkpoint: Path) -> None:
    """Restore student (and extras) from a farlab checkpoint, refusing missing or unexpected keys."""
    adapter_file = checkpoint / "adapter_model.safetensors"
    student_file = checkpoint / "model.safetensors"
    if adapter_file.is_file():  # a LoRA student: the checkpoint holds its adapters (and saved heads)
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(pair.student, safetensors.torch.load_file(str(adapter_file)))
        if result.unexpected_keys:
            raise RuntimeError(f"checkpoint {checkpoint} has adapter keys the student lacks: {result.unexpected_keys}")
    elif student_file.is_file():
        state = safetensors.torch.load_file(str(student_file))
        missing, unexpected = pair.student.load_state_dict(state, strict=False)
        tied = set(getattr(pair.student, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {checkpoint} does not match the student: missing {missing}, unexpected {unexpected}"
            )
    else:
        raise FileNotFoundError(f"{checkpoint} holds neither model.safetensors nor adapters; not a farlab checkpoint")
    extras_file = checkpoint / EXTRAS_FILE
    if extras_file.is_file():
        extras = safetensors.torch.load_file(str(extras_file))
        objective = {k.removeprefix("objective."): v for k, v in extras.items() if k.startswith("objective.")}
        pair.objective.load_state_dict(objective)
        teacher = {k.removeprefix("teacher."): v for k, v in extras.items() if k.startswith("teacher.")}
        if teacher and pair.teacher is not None:
            pair.teacher.load_state_dict(teacher)
