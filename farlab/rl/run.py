"""One RL run (``rl=grpo``): prompts from the task handler, rewards from the registry, ``trl.GRPOTrainer``.

The run keeps farlab's shape: the task's eval split before and after training (pre/post, transfer gap), the
student exported to ``final/``, atomic checkpoints with auto-resume, SIGUSR1/USR2 graceful stop (the caller's
:class:`~farlab.trainer.signals.GracefulStop`), periodic peak metrics; ``farlab.train.execute`` writes the run dir.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, Trainer, set_seed

from farlab.data import TASK_FAMILIES
from farlab.data.base import TaskData
from farlab.errors import ConfigError
from farlab.eval.loop import evaluate_model
from farlab.eval.transfer import metrics_head
from farlab.losses.plan import LossPlan
from farlab.models.loading import build_student, export_student, head_for, load_tokenizer
from farlab.models.lora import apply_lora
from farlab.rl.checks import needs_teacher, rl_family_problem
from farlab.rl.rewards import REWARDS, RewardFunction
from farlab.rl.teacher import MONITOR_KEY, TeacherReward
from farlab.rl.trainer import FarlabGRPOTrainer, grpo_config
from farlab.teachers.backends import TEACHER_BACKENDS
from farlab.teachers.backends.base import TeacherBackend
from farlab.teachers.backends.hf import HFBackend
from farlab.teachers.store import TeacherStore
from farlab.teachers.strategies import TeacherContext, TeacherSettings, prepare_teacher
from farlab.trainer.callbacks import PeakMetrics
from farlab.trainer.checkpoints import latest_complete_checkpoint, resume_checkpoint
from farlab.trainer.fit import configure_wandb, finish_wandb, set_threads
from farlab.trainer.resources import peak_memory_mb
from farlab.trainer.sft import sft_fine_tuner
from farlab.trainer.signals import GracefulStop, Preempted

log = logging.getLogger(__name__)
EDGE_FRACTION = 0.2  # reward curve summary: mean over the first and the last 20% of logged steps


def rl_task(task_cfg: DictConfig, tokenizer: Any, seed: int) -> tuple[TaskData, datasets.Dataset]:
    """The task's eval data (a generation kind) and its train split as RL prompts (``prompt`` + the columns the
    rewards read), from the task handler's ``rl_data`` (translation; GLUE with a verbaliser)."""
    handler = TASK_FAMILIES.get(task_cfg.family)
    if not hasattr(handler, "rl_data"):
        raise ConfigError(rl_family_problem(task_cfg.family))
    return handler.rl_data(task_cfg, tokenizer, seed)


def reward_functions(cfg: DictConfig, teacher: TeacherBackend | None, tokenizer: Any) -> tuple[list[Any], list[float]]:
    """The registry's rewards with their weights, plus the teacher reward (weight ``rl.teacher_weight``)."""
    rl = cfg.rl
    funcs: list[Any] = [RewardFunction(REWARDS.get(name, context="rl.rewards")) for name in rl.rewards]
    weights = [float(w) for w in rl.reward_weights] if rl.reward_weights is not None else [1.0] * len(funcs)
    if rl.teacher_weight > 0:
        assert teacher is not None
        funcs.append(TeacherReward(teacher, tokenizer, rl.teacher_kl, rl.teacher_topk_tail, rl.teacher_kl_estimator))
        weights.append(float(rl.teacher_weight))
    return funcs, weights


def warm_start(cfg: DictConfig, student: PreTrainedModel, data: TaskData, tokenizer: Any) -> PreTrainedModel:
    """``rl.init=sft``: the student CE-fine-tuned on the task first (teacher_strategy.recipe), kept in the teacher
    store under its own key so every RL run of a sweep with this student, task and seed reuses one."""
    recipe = cfg.teacher_strategy.recipe
    material = {
        "role": "rl_init_student",
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "student": OmegaConf.to_container(cfg.model.student, resolve=True),
        "tokenizer": cfg.model.tokenizer,
        "seed": int(cfg.seed),
        "recipe": OmegaConf.to_container(recipe, resolve=True),
    }
    fine_tune = sft_fine_tuner(recipe, cfg.train, int(cfg.seed))

    def train(out: Path) -> None:
        set_seed(int(cfg.seed))
        fine_tune(student, data, tokenizer, out)

    name = f"{cfg.task.name}-{cfg.model.student.name}-rlinit-seed{cfg.seed}"
    path, reused = TeacherStore(cfg.teacher_strategy.store_dir).get_or_train(name, material, train)
    log.info("rl.init=sft: student %s from %s", "reused" if reused else "trained", path)
    return head_for(data).auto_class.from_pretrained(path)


@dataclass
class Models:
    student: PreTrainedModel
    teacher: PreTrainedModel | None  # the in-process teacher (teacher=hf), else None
    teacher_backend: TeacherBackend | None = None  # what the teacher reward asks (hf or openai)


def build_models(cfg: DictConfig, data: TaskData, tokenizer: Any, plan: LossPlan) -> Models:
    attn = cfg.model.attn_implementation
    use_teacher = needs_teacher(cfg.rl)
    kind = TEACHER_BACKENDS.get(cfg.teacher.backend)
    student, base_teacher = build_student(cfg, head_for(data), tokenizer, attn,
                                          need_base_teacher=use_teacher and kind.in_process)
    teacher, backend = None, None
    if use_teacher:
        ctx = TeacherContext(TeacherSettings.from_run_config(cfg), base_teacher, data, tokenizer, attn, plan,
                             fine_tune=sft_fine_tuner(cfg.teacher_strategy.recipe, cfg.train, cfg.seed))
        prepared = kind.prepare(ctx, prepare_teacher)  # hf: base or SFT (teacher store), frozen; openai: a client
        teacher = prepared.model
        # The loss group's chunked logits do not apply to RL: an in-process teacher gives logits (or its top-k).
        backend = HFBackend(teacher, cfg.teacher.top_k) if teacher is not None else prepared.make_backend(None)
    if cfg.rl.init == "sft":
        student = warm_start(cfg, student, data, tokenizer)
    if cfg.model.student.lora.r > 0:
        student = apply_lora(student, cfg.model.student.lora, data.kind)
    return Models(student, teacher, backend)


def reference_model(cfg: DictConfig, models: Models) -> PreTrainedModel | None:
    """GRPO's KL anchor (``rl.beta > 0``): the teacher, or a frozen copy of the initial student; None without a KL
    term, and for a LoRA student (TRL disables its adapters to get the initial model)."""
    if cfg.rl.beta == 0:
        return None
    if cfg.rl.reference == "teacher":
        return models.teacher  # same tokenizer: checked by farlab.rl.checks
    return None if cfg.model.student.lora.r > 0 else copy.deepcopy(models.student)


def reward_curve(log_history: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean of each logged reward over the first and the last 20% of its logged steps (at least one each)."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [e[key] for e in log_history if isinstance(e.get(key), (int, float))]
        if not values:
            continue
        n = max(1, round(len(values) * EDGE_FRACTION))
        out[key] = {"first": sum(values[:n]) / n, "last": sum(values[-n:]) / n, "logged_steps": len(values)}
    return out


def run_rl(cfg: DictConfig, run_dir: Path, plan: LossPlan, stop: GracefulStop) -> dict[str, Any]:
    """One GRPO run; same metrics.json layout as an SFT/KD run plus ``rl`` (the reward curve)."""
    set_threads(cfg.train.num_threads)
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.processor)
    data, prompts = rl_task(cfg.task, tokenizer, cfg.seed)
    if not data.task_kind.vocabulary_logits:
        raise ConfigError(f"rl=grpo needs a generation task; task {data.name!r} builds a {data.kind!r} task")
    if cfg.rl.teacher_weight > 0 and not data.task_kind.decoder_only:
        raise ConfigError(f"rl.teacher_weight={cfg.rl.teacher_weight}: the teacher reward scores text prompts only; "
                          f"task {data.name!r} has image prompts ({data.kind}). Set rl.teacher_weight=0")
    log.info("rl: %d prompts, %d eval rows (%s)", len(prompts), len(data.eval), data.eval_split_name)
    models = build_models(cfg, data, tokenizer, plan)
    eval_bs, progress = cfg.train.eval_batch_size, cfg.train.progress_bar
    pre = {"student": evaluate_model(models.student, data, eval_bs, "pre-eval student", progress)}
    if models.teacher is not None:
        pre["teacher"] = evaluate_model(models.teacher, data, eval_bs, "pre-eval teacher", progress)

    funcs, weights = reward_functions(cfg, models.teacher_backend, tokenizer)
    report_to = configure_wandb(cfg.wandb, run_dir)
    set_seed(int(cfg.seed))
    trainer = FarlabGRPOTrainer(
        model=models.student, reward_funcs=funcs, args=grpo_config(cfg, run_dir, report_to, run_dir.name, weights),
        train_dataset=prompts, processing_class=tokenizer, callbacks=[stop], reference=reference_model(cfg, models),
    )
    for func in funcs:
        if isinstance(func, TeacherReward):
            # TRL averages and logs what its _metrics collect each logging step (teacher/reverse_kl)
            func.bind(trainer.model, monitor=lambda key, value: trainer._metrics["train"][key].append(value))
    student = trainer.model
    peak = PeakMetrics(lambda: evaluate_model(student, data, eval_bs, "eval student", False),
                       cfg.train.eval_steps, log_fn=lambda logs: Trainer.log(trainer, logs))
    trainer.add_callback(peak)
    resume_from = resume_checkpoint(run_dir, cfg.resume)
    if resume_from is not None:
        trainer.restore_callbacks(resume_from)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop.requested:
        step = result.global_step if stop.stopped_at is not None else None
        raise Preempted(stop.signum, step, latest_complete_checkpoint(run_dir), stop.resubmit)

    final = export_student(student, tokenizer, run_dir / "final")
    post = {"student": evaluate_model(final, data, eval_bs, "post-eval student", progress)}
    peak.record(post["student"], result.global_step)
    teacher_score = (pre.get("teacher") or {}).get(data.primary_metric)
    keys = ["reward", *[f"rewards/{f.__name__}/mean" for f in funcs], MONITOR_KEY, "kl", "completions/mean_length"]
    curve = reward_curve(trainer.state.log_history, keys)
    metrics = {
        **metrics_head(data, pre, post, teacher_score),
        "extra_eval": {},
        "train": {
            "runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 2),  # this process's part
            "global_step": result.global_step,
            "train_samples_per_s": result.metrics.get("train_samples_per_second"),
            "final_loss": result.training_loss,
            "resumed_from": str(resume_from) if resume_from else None,
            "reward_first": curve.get("reward", {}).get("first"),
            "reward_last": curve.get("reward", {}).get("last"),
        },
        "rl": {"method": cfg.rl.name, "rewards": [f.__name__ for f in funcs], "weights": weights,
               "curve": curve},
        "loss_components": {},
        "best": peak.best,
        "peak_memory_mb": peak_memory_mb(),
    }
    if report_to:
        finish_wandb(metrics)
    return metrics
