"""``python -m farlab.train [overrides]``: one Hydra-composed run = one experiment.

Read top to bottom: validate, data, models, teacher, objective, pre-eval, train, post-eval, report.
Every choice lives in a config group and a registry; this file only wires the stages.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from transformers import PreTrainedModel, set_seed

from farlab import distributed
from farlab.config import REPO_ROOT, register_configs
from farlab.data import build_task_data
from farlab.data.base import TaskData
from farlab.eval.extra import evaluate_extra, extra_eval_report
from farlab.eval.harness import build_harness
from farlab.eval.loop import evaluate_model
from farlab.eval.transfer import metrics_head
from farlab.losses.gkd import build_on_policy
from farlab.losses.objective import build_objective
from farlab.losses.plan import LossPlan
from farlab.models.loading import build_student as build_initial_student
from farlab.models.loading import (
    export_student,
    head_for,
    load_tokenizer,
    model_shape,
)
from farlab.models.lora import apply_lora
from farlab.report import print_summary
from farlab.run_lock import run_dir_lock
from farlab.run_record import completed_run, run_record
from farlab.teachers.backends import TEACHER_BACKENDS, PreparedTeacher
from farlab.teachers.backends.accounting import TeacherComputeLog
from farlab.teachers.generations import teacher_targets
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher
from farlab.teachers.tokenizers import check_logit_widths, check_tokenizers, logit_width, vocab_aligner
from farlab.trainer.callbacks import PeakMetrics
from farlab.trainer.checkpoints import (
    check_retention,
    latest_complete_checkpoint,
    prune_completed_run,
    resume_checkpoint,
)
from farlab.trainer.early_stop import EarlyStopping
from farlab.trainer.fit import FitSettings, configure_wandb, finish_wandb, make_trainer, set_threads
from farlab.trainer.pair import DistillationModule, frozen_guard
from farlab.trainer.resources import peak_memory_mb
from farlab.trainer.sft import sft_fine_tuner
from farlab.trainer.signals import GracefulStop, Preempted, requeue_or_exit
from farlab.validate import validate_config

log = logging.getLogger("farlab.train")
register_configs()


def attention_implementation(model_cfg: DictConfig, plan: LossPlan) -> str | None:
    """The attention kernel to load models with: eager whenever a loss needs the attention maps."""
    if not plan.needs_attentions:
        return model_cfg.attn_implementation
    if model_cfg.attn_implementation != "eager":
        # sdpa/flash kernels return no attention maps (an empty tuple), which would silently zero the loss.
        log.info("attention loss configured: switching attn_implementation %s -> eager",
                 model_cfg.attn_implementation or "default (sdpa)")
    return "eager"


@dataclass
class Setup:
    """Everything built before training: the pair the Trainer optimises and the teacher's provenance."""

    pair: DistillationModule
    teacher: PreTrainedModel | None  # the in-process teacher, or None (no KD, or a cache/server backend)
    prepared: PreparedTeacher | None  # what the teacher backend prepared (its pre-training metrics for a cache)


def build_student(cfg: DictConfig, data: TaskData, tokenizer: Any, plan: LossPlan,
                  attn: str | None) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """The student, and the base teacher when it is needed now (in-process KD, or a student copied from it)."""
    in_process = TEACHER_BACKENDS.get(cfg.teacher.backend).in_process
    need_base_teacher = plan.needs_teacher and in_process
    return build_initial_student(cfg, head_for(data), tokenizer, attn, need_base_teacher=need_base_teacher, data=data)


def build_setup(cfg: DictConfig, data: TaskData, tokenizer: Any, plan: LossPlan, attn: str | None) -> Setup:
    """Student, teacher (through its strategy and backend), objective: the models of one run."""
    student, base_teacher = build_student(cfg, data, tokenizer, plan, attn)
    teacher = prepared = None
    if plan.needs_teacher:
        ctx = TeacherContext(TeacherSettings.from_run_config(cfg), base_teacher, data, tokenizer, attn, plan,
                             fine_tune=sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed))
        prepared = TEACHER_BACKENDS.get(cfg.teacher.backend).prepare(ctx, prepare_teacher)
        teacher = prepared.model  # None for cache/openai: no teacher in this process
        check_logit_widths(cfg.model.vocab_align, plan, logit_width(student, data.kind), prepared.vocab_size)
    shapes = (model_shape(student), prepared.shape if prepared else None)
    trainable_teacher = teacher is not None and bool(cfg.teacher_strategy.trainable)
    if cfg.model.student.lora.r > 0:
        student = apply_lora(student, cfg.model.student.lora, data.kind)
    if trainable_teacher and cfg.model.teacher.lora.r > 0:
        teacher = apply_lora(teacher, cfg.model.teacher.lora, data.kind)

    set_seed(cfg.seed)
    objective = build_objective(plan, cfg.layer_map, cfg.projection, *shapes)
    cotrain = cfg.teacher_strategy.cotrain
    pair = DistillationModule(
        student, teacher, objective, kind=data.kind,
        teacher_trainable=trainable_teacher,
        teacher_ce_weight=cotrain.ce_weight,
        detach_targets=cotrain.detach_targets,
        backend=prepared.make_backend(student if prepared.on_student else teacher) if prepared else None,
        vocab_align=vocab_aligner(cfg.model.vocab_align, data.kind) if prepared else None,
        on_policy=build_on_policy(cfg.loss.get("gkd"), data.task_kind, tokenizer, cfg.seed) if prepared else None,
    )
    return Setup(pair, teacher, prepared)


def pre_metrics(setup: Setup, data: TaskData, eval_bs: int, progress: bool) -> dict[str, Any]:
    """Student and teacher metrics before training (a cache backend brings its record of the teacher's)."""
    pre = {"student": evaluate_model(setup.pair.student, data, eval_bs, "pre-eval student", progress)}
    if setup.teacher is not None:
        pre["teacher"] = evaluate_model(setup.teacher, data, eval_bs, "pre-eval teacher", progress)
    elif setup.prepared is not None and setup.prepared.metrics is not None:
        pre["teacher"] = setup.prepared.metrics
    return pre


@dataclass
class FitResult:
    trainer: Any
    result: Any
    peak: PeakMetrics
    compute: TeacherComputeLog | None
    resumed_from: Path | None
    report_to: Any


def fit(cfg: DictConfig, setup: Setup, data: TaskData, tokenizer: Any, run_dir: Path, stop: GracefulStop) -> FitResult:
    """Train the pair with its callbacks; a signal during training raises :class:`Preempted`."""
    pair = setup.pair
    cotrain = cfg.teacher_strategy.cotrain
    settings = FitSettings.from_config(
        cfg.train,
        report_to=configure_wandb(cfg.wandb, run_dir),
        run_name=run_dir.name,
        teacher_learning_rate=cotrain.learning_rate if pair.teacher_trainable else None,
    )
    trainer = make_trainer(pair, data, tokenizer, run_dir, settings, cfg.seed, callbacks=[stop])
    eval_bs = cfg.train.eval_batch_size
    peak = PeakMetrics(lambda: distributed.on_main(lambda: evaluate_model(pair.student, data, eval_bs, "eval student",
                                                                         False), whole=pair),
                       cfg.train.eval_steps, log_fn=trainer.log)
    trainer.add_callback(peak)
    if cfg.train.early_stopping.patience is not None:  # watches peak's evals of the primary metric
        trainer.add_callback(EarlyStopping(peak, data.primary_metric, cfg.train.early_stopping.patience))
    compute = TeacherComputeLog(pair, log_fn=trainer.log) if pair.teacher_backend is not None else None
    if compute is not None:
        trainer.add_callback(compute)  # teacher_forwards_per_step (and on_policy_fraction) in the logs
    resume_from = resume_checkpoint(run_dir, cfg.resume)
    with frozen_guard(setup.teacher, frozen=setup.teacher is not None and not pair.teacher_trainable):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.requested:  # stopped after a checkpoint, or the signal came during the last step's save
        step = result.global_step if stop.stopped_at is not None else None
        raise Preempted(stop.signum, step, latest_complete_checkpoint(run_dir), stop.resubmit)
    return FitResult(trainer, result, peak, compute, resume_from, settings.report_to)


def export_models(setup: Setup, tokenizer: Any, run_dir: Path) -> dict[str, PreTrainedModel | None]:
    """Write final/ (the student, adapters merged) and, for a co-trained teacher, final_teacher/ (the teacher the
    student learned from, read by the workbench). Returns the exported models; a frozen teacher is None here: it
    did not change, so it is evaluated before training only."""
    student = export_student(setup.pair.student, tokenizer, run_dir / "final")
    teacher = None
    if setup.pair.teacher_trainable:
        teacher = export_student(setup.teacher, tokenizer, run_dir / "final_teacher")
    return {"student": student, "teacher": teacher}


def export_and_evaluate(setup: Setup, data: TaskData, tokenizer: Any, run_dir: Path, eval_bs: int, progress: bool,
                        harness: Any = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """final/ and the post-training metrics (main split, extra eval files, lm-eval tasks)."""
    post_models = export_models(setup, tokenizer, run_dir)
    post = {role: evaluate_model(model, data, eval_bs, f"post-eval {role}", progress)
            for role, model in post_models.items() if model is not None}
    extra = evaluate_extra(data, post_models, eval_bs, "post", progress)
    return post, extra, (harness.evaluate(post_models, "post") if harness else {})


def train_summary(fitted: FitResult) -> dict[str, Any]:
    trainer, result = fitted.trainer, fitted.result
    return {
        "runtime_s": round(trainer.train_seconds, 2),
        "global_step": result.global_step,
        "train_samples_per_s": result.metrics.get("train_samples_per_second"),
        "tokens_per_s": round(trainer.tokens_seen / max(trainer.train_seconds, 1e-9), 1),
        "final_loss": trainer.mean_loss(),  # over all steps, across resumes
        "resumed_from": str(fitted.resumed_from) if fitted.resumed_from else None,
        **trainer.callback_reports(),  # e.g. early_stopped_at_step
        **(fitted.compute.summary(result.global_step) if fitted.compute is not None else {}),  # since the last start
    }


def run(cfg: DictConfig, run_dir: Path, stop: GracefulStop | None = None) -> dict[str, Any]:
    """One experiment; raises :class:`Preempted` when ``stop`` saw a signal and training stopped early."""
    plan = validate_config(cfg)
    if cfg.rl.name != "none":  # the RL paradigm (rl=grpo): trl.GRPOTrainer, same run dir and metrics layout
        from farlab.rl.run import run_rl  # local: only RL runs import TRL

        return run_rl(cfg, run_dir, plan, stop or GracefulStop())
    set_threads(cfg.train.num_threads)
    attn = attention_implementation(cfg.model, plan)

    # a processor for vision-language pairs; model.pad_token for tokenizers that ship without one
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.processor, cfg.model.pad_token)
    data = build_task_data(cfg.task, tokenizer, cfg.seed, cfg.distill)  # + teacher prompts
    data = teacher_targets(cfg.generate, TeacherContext(  # task.targets=teacher: the teacher's generations
        TeacherSettings.from_run_config(cfg), None, data, tokenizer, attn, plan,
        fine_tune=sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed)), prepare_teacher)
    log.info("task %s: %d train / %d eval rows (%s)", data.name, len(data.train), len(data.eval), data.eval_split_name)
    check_tokenizers(cfg.model, plan, tokenizer, data)  # model.teacher_tokenizer vs the student's
    harness = build_harness(cfg.eval.harness, tokenizer, cfg.paths.get("data"), data.task_kind,
                            cfg.model.teacher_tokenizer)  # eval.harness.tasks (lm-eval), or None
    setup = build_setup(cfg, data, tokenizer, plan, attn)
    eval_bs, progress = cfg.train.eval_batch_size, cfg.train.progress_bar
    pre_models = {"student": setup.pair.student, "teacher": setup.teacher}
    pre, pre_extra, pre_harness = distributed.on_main(lambda: (  # evaluation runs once, on rank 0 (farlab.distributed)
        pre_metrics(setup, data, eval_bs, progress),
        evaluate_extra(data, pre_models, eval_bs, "pre", progress),  # task.extra_eval_files, if any
        harness.evaluate(pre_models, "pre") if harness else {}))  # eval.harness.tasks, if any

    fitted = fit(cfg, setup, data, tokenizer, run_dir, stop or GracefulStop())
    post, post_extra, post_harness = distributed.on_main(  # whole: every rank gathers an FSDP-sharded pair first
        lambda: export_and_evaluate(setup, data, tokenizer, run_dir, eval_bs, progress, harness), whole=setup.pair)
    fitted.peak.record(post["student"], fitted.result.global_step)

    # The transfer gap uses the teacher the student actually learned from (post-training when co-trained).
    teacher_score = (post.get("teacher") or pre.get("teacher") or {}).get(data.primary_metric)
    metrics = {
        **metrics_head(data, pre, post, teacher_score),
        "extra_eval": extra_eval_report(pre_extra, post_extra),  # other eval files, e.g. MNLI dev_mismatched
        "train": train_summary(fitted),
        "loss_components": fitted.trainer.component_means(),
        "best": fitted.peak.best,
        "peak_memory_mb": peak_memory_mb(),
        "student_init": getattr(setup.pair.student.config, "farlab_pruning", None),  # auto blocks / width
        **({"harness": harness.report(pre_harness, post_harness)} if harness else {}),
    }
    if fitted.report_to:
        finish_wandb(metrics)
    return metrics


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one experiment with its run-dir bookkeeping (status, metadata, metrics, summary).

    SIGUSR1/SIGUSR2 stop it gracefully for the whole run: status ``preempted`` and :class:`Preempted` raised.
    A run dir already holding this run, completed, is not run again (``rerun=true`` or ``resume=false`` force it).
    One process at a time: a run dir another live process holds raises :class:`~farlab.errors.RunDirBusy`.
    """
    distributed.init_from_env()  # under torchrun/multi-task SLURM: rank 0 alone writes the run dir
    check_retention(cfg.train.keep_checkpoints, cfg.train.keep_final)
    with ExitStack() as held:
        distributed.on_main(lambda: held.enter_context(run_dir_lock(run_dir)))  # before reading what is there
        return _execute_locked(cfg, run_dir, overrides)


def _execute_locked(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    done = distributed.on_main(lambda: completed_run(run_dir, cfg)) if cfg.resume and not cfg.rerun else None
    if done is not None:
        log.info("run already completed (%s): skipping; metrics from metrics.json", run_dir)
        if distributed.is_main():
            prune_completed_run(run_dir, cfg.train.keep_checkpoints, cfg.train.keep_final)  # as asked this time
        return done
    record = run_record(run_dir, cfg, overrides)  # a no-op record on ranks other than 0
    stop = GracefulStop()
    with stop.installed():
        record.start(cfg)
        try:
            metrics = run(cfg, run_dir, stop)
        except Preempted as err:
            record.finish("preempted", err)
            raise
        except BaseException as err:
            record.finish("failed", err)
            raise
        with stop.hold():
            record.write_metrics(metrics)
            record.finish("completed")
            if distributed.is_main():
                prune_completed_run(run_dir, cfg.train.keep_checkpoints, cfg.train.keep_final)
    if distributed.is_main():
        print_summary(metrics, run_dir)
    return metrics


@hydra.main(config_path=str(REPO_ROOT / "conf"), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the primary post-training metric, so Hydra sweepers can optimise it."""
    hydra_cfg = HydraConfig.get()
    distributed.init_from_env()
    run_dir = Path(distributed.broadcast(cfg.output_dir or hydra_cfg.runtime.output_dir))  # rank 0's, on all ranks
    try:
        metrics = execute(cfg, run_dir, list(hydra_cfg.overrides.task))
    except Preempted as err:
        distributed.shutdown(wait=False)
        requeue_or_exit(err)  # submitit/SLURM requeue, or exit 75 (signals.PREEMPTED_EXIT_CODE)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown(wait=True)
    return metrics["post"]["student"][metrics["primary_metric"]]


if __name__ == "__main__":
    main()
