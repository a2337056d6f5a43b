"""``trl.GRPOTrainer`` with farlab's checkpoints: staged, published atomically, with the callbacks' state.

TRL owns the GRPO objective, generation and reward bookkeeping; this subclass only changes where a checkpoint is
written (farlab.trainer.checkpoints: a ``COMPLETE`` marker, so a resume never reads a torn one) and carries the
state of farlab's callbacks (peak metrics) in ``farlab_state.json`` as DistillationTrainer does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

from farlab.trainer import checkpoints
from farlab.trainer.trainer import STATE_FILE


def grpo_config(cfg: DictConfig, run_dir: Path, report_to: tuple[str, ...], run_name: str,
                weights: list[float]) -> GRPOConfig:
    """farlab's ``train`` and ``rl`` blocks as TRL's GRPOConfig (one place maps every field)."""
    tr, rl = cfg.train, cfg.rl
    return GRPOConfig(
        output_dir=str(run_dir),
        num_train_epochs=tr.epochs,
        max_steps=tr.max_steps,
        per_device_train_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum_steps,
        learning_rate=rl.learning_rate if rl.learning_rate is not None else tr.learning_rate,
        weight_decay=tr.weight_decay,
        warmup_steps=tr.warmup_ratio,  # a float < 1 is a fraction of the total steps
        max_grad_norm=tr.max_grad_norm,
        logging_steps=tr.logging_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        bf16=tr.bf16,
        fp16=tr.fp16,
        gradient_checkpointing=tr.gradient_checkpointing,
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        report_to=list(report_to) or "none",
        run_name=run_name,
        disable_tqdm=not tr.progress_bar,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        top_p=rl.top_p,
        beta=rl.beta,
        epsilon=rl.epsilon,
        loss_type=rl.loss_type,
        reward_weights=weights,
        use_vllm=rl.use_vllm,
        vllm_mode=rl.vllm_mode,
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
    )


class FarlabGRPOTrainer(GRPOTrainer):
    """GRPOTrainer writing farlab checkpoints (see the module docstring), with the reference model handed in.

    reference: what GRPO's KL term (``beta``) anchors to: a frozen copy of the initial student or the teacher
    (``rl.reference``). TRL would reload the reference from the student's hub id or path, which a model built
    from a config or warm-started in this process does not have; so TRL is built with ``beta=0`` (no reference)
    and the reference is installed afterwards the way TRL prepares its own (no dropout, fused log-prob head).
    None with ``beta > 0``: a LoRA student, whose reference is the base model with the adapters disabled (TRL).
    """

    def __init__(self, *args: Any, reference: PreTrainedModel | None = None, **kwargs: Any) -> None:
        grpo_args: GRPOConfig = kwargs["args"]
        beta, grpo_args.beta = grpo_args.beta, 0.0
        try:
            super().__init__(*args, **kwargs)
        finally:
            grpo_args.beta = beta
        self.beta = beta
        if beta and reference is not None:
            self.ref_model = self._prepared_reference(reference)

    def _prepared_reference(self, model: PreTrainedModel) -> Any:
        model.requires_grad_(False)
        model.eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(model)
        add_fused_lm_head(model, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """No README.md in the run dir: its files are farlab's (docs/run_dir.md)."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(self.args.output_dir)
        staging_root = run_dir / checkpoints.STAGING_DIR
        name = f"checkpoint-{self.state.global_step}"
        keep = self.args.save_total_limit
        shutil.rmtree(staging_root / name, ignore_errors=True)  # leftovers of a write killed mid-way
        self.args.output_dir, self.args.save_total_limit = str(staging_root), None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = str(run_dir), keep
        callbacks = {type(cb).__name__: cb.checkpoint_state() for cb in self.callback_handler.callbacks
                     if hasattr(cb, "checkpoint_state")}
        (staging_root / name / STATE_FILE).write_text(json.dumps({"callbacks": callbacks}, indent=1))
        checkpoints.publish(staging_root / name, run_dir / name)
        checkpoints.rotate(run_dir, keep or 0)

    def train(self, resume_from_checkpoint: str | None = None, *args: Any, **kwargs: Any) -> TrainOutput:  # type: ignore[override]
        """A checkpoint at the last step is loaded instead of trained from: the Trainer, resumed there, would run
        one more GRPO step (a preemption after training, during the final evaluation, must not change the run)."""
        if resume_from_checkpoint is not None:
            state = TrainerState.load_from_json(str(Path(resume_from_checkpoint) / TRAINER_STATE_NAME))
            target = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
            if state.global_step >= target:
                self.state = state
                self._load_from_checkpoint(resume_from_checkpoint)
                losses = [e["loss"] for e in state.log_history if "loss" in e]
                return TrainOutput(state.global_step, sum(losses) / max(len(losses), 1), {})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def restore_callbacks(self, checkpoint: Path) -> None:
        """Load farlab's callback state (peak metrics) from a checkpoint before resuming there."""
        state_file = checkpoint / STATE_FILE
        if not state_file.is_file():
            return
        saved = json.loads(state_file.read_text()).get("callbacks", {})
        for cb in self.callback_handler.callbacks:
            if type(cb).__name__ in saved and hasattr(cb, "load_checkpoint_state"):
                cb.load_checkpoint_state(saved[type(cb).__name__])
