"""Teacher strategies: where the teacher's weights come from (``init``) and whether it trains.

``init`` is a registry entry (``base``: pretrained weights + a fresh task head; ``sft``: fine-tuned on
the task first, through the teacher store); ``trainable`` decides frozen vs co-trained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, set_seed

from farlab.config import ModelSpec, canonical_setting
from farlab.data.base import TaskData
from farlab.losses.plan import LossPlan
from farlab.models.loading import build_model, check_vocab, head_for
from farlab.models.lora import apply_lora
from farlab.models.padding import fit_pad_token
from farlab.models.precision import torch_dtype
from farlab.registry import Registry, unknown_choice_message
from farlab.teachers.store import TeacherStore

# (model, data, tokenizer, out_dir) -> None: fine-tune ``model`` with CE alone into ``out_dir``. The trainer
# layer provides it (farlab.trainer.sft.sft_fine_tuner); teachers sit below the trainer and never import it.
FineTune = Callable[[PreTrainedModel, TaskData, Any, Path], None]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSettings:
    """The parts of a run's config that setting up its teacher reads, passed down instead of the root config."""

    task: DictConfig  # part of the SFT-store and cache keys
    model: DictConfig  # the pair: teacher and student specs, tokenizer
    strategy: DictConfig  # teacher_strategy: init, trainable, recipe, store_dir
    backend: DictConfig  # teacher: backend name, top_k and that backend's section
    layer_map: DictConfig  # which teacher layers a cache stores for feature losses
    seed: int
    eval_batch_size: int
    progress: bool

    @classmethod
    def from_run_config(cls, cfg: DictConfig) -> TeacherSettings:
        return cls(cfg.task, cfg.model, cfg.teacher_strategy, cfg.teacher, cfg.layer_map, int(cfg.seed),
                   int(cfg.train.eval_batch_size), bool(cfg.train.progress_bar))


@dataclass
class TeacherContext:
    settings: TeacherSettings
    base_teacher: PreTrainedModel | None  # None: built on first use by base() (cache/openai backends may not need it)
    data: TaskData
    tokenizer: Any
    attn_implementation: str | None
    plan: LossPlan
    fine_tune: FineTune | None = None  # needed by the sft init only

    def base(self) -> PreTrainedModel:
        """The base teacher, built (seeded as in train.py) the first time a strategy needs it."""
        if self.base_teacher is None:
            set_seed(self.settings.seed)
            self.base_teacher = build_model(self.settings.model.teacher, head_for(self.data), self.attn_implementation)
            fit_pad_token(self.base_teacher, self.tokenizer, self.settings.model.get("pad_token"))
            check_vocab(self.base_teacher, self.tokenizer, "teacher")
        return self.base_teacher


TeacherInit = Callable[[TeacherContext], PreTrainedModel]
TEACHER_INITS: Registry[TeacherInit] = Registry("teacher_strategy.init")


@TEACHER_INITS.register("base")
def _base(ctx: TeacherContext) -> PreTrainedModel:
    return ctx.base()


@TEACHER_INITS.register("sft")
def _sft(ctx: TeacherContext) -> PreTrainedModel:
    cfg = ctx.settings
    store = TeacherStore(cfg.strategy.store_dir)
    material = sft_store_material(cfg)
    name = sft_store_name(cfg)
    if ctx.fine_tune is None:
        raise RuntimeError("teacher_strategy.init=sft needs TeacherContext.fine_tune (farlab.trainer.sft)")

    def train(out: Path) -> None:
        set_seed(cfg.seed)
        model, lora = ctx.base(), cfg.model.teacher.lora
        if lora.r > 0:  # LoRA fine-tuning; fine_tune merges the adapters into the saved weights
            model = apply_lora(model, lora, ctx.data.kind)
        ctx.fine_tune(model, ctx.data.gold_only(), ctx.tokenizer, out)  # no transfer/generated rows

    path, _ = store.get_or_train(name, material, train)
    kwargs = {"attn_implementation": ctx.attn_implementation} if ctx.attn_implementation else {}
    return head_for(ctx.data).auto_class.from_pretrained(path, dtype=torch_dtype(cfg.model.teacher), **kwargs)


# Task fields that add training rows the SFT teacher never sees (it learns from the gold-labelled rows only), so
# a run with them shares the store entry of the plain run.
UNUSED_BY_SFT = ("targets", "transfer")


def sft_store_name(settings: TeacherSettings) -> str:
    return f"{settings.task.name}-{settings.model.teacher.name}-seed{settings.seed}"


def sft_store_material(settings: TeacherSettings) -> dict[str, Any]:
    """What identifies an SFT teacher: task (data and limits), teacher model (LoRA and dtype included), tokenizer
    (and an added pad token), seed, recipe.

    Settings newer than the store that are at their defaults (dtype float32, no width pruning, no pad token) are
    left out, so the entries stores already hold keep their keys.
    """
    material = {
        "task": _task_material(settings.task),
        "teacher": _teacher_spec_material(settings.model.teacher),
        "tokenizer": settings.model.tokenizer,
        "seed": settings.seed,
        "recipe": OmegaConf.to_container(settings.strategy.recipe, resolve=True),
    }
    if settings.model.get("pad_token") is not None:
        material["pad_token"] = settings.model.pad_token
    return material


# ModelSpec fields added after stores were filled: at their schema defaults they change nothing about a teacher.
LATER_SPEC_FIELDS = ("dtype", "width", "importance_examples", "block_importance")


def _teacher_spec_material(spec: Any) -> dict[str, Any]:
    teacher = OmegaConf.to_container(spec, resolve=True)
    defaults = OmegaConf.to_container(OmegaConf.structured(ModelSpec), resolve=True)
    return {k: v for k, v in teacher.items() if not (k in LATER_SPEC_FIELDS and v == defaults.get(k))}


def _task_material(task: Any) -> dict[str, Any]:
    """The task's fields less those the SFT teacher never uses, data paths made canonical
    (:func:`~farlab.config.canonical_setting`): the same files reached from another checkout give the same key."""
    fields = OmegaConf.to_container(task, resolve=True)
    return {k: canonical_setting(k, v) for k, v in fields.items() if k not in UNUSED_BY_SFT}


def strategy_problems(ts: Any, plan: Any) -> list[str]:
    """Model-free checks of ``teacher_strategy`` against the run's :class:`~farlab.losses.plan.LossPlan`."""
    problems = []
    if ts.init not in TEACHER_INITS:
        problems.append(unknown_choice_message("teacher_strategy.init", ts.init, TEACHER_INITS.names()))
    if ts.trainable and plan.chunk_size is not None:
        problems.append(
            f"loss {plan.config.name!r} sets a response chunk_size, which a co-trained teacher "
            f"(teacher_strategy={ts.name}) cannot use: its output head would get gradients through the "
            "distillation targets. Set loss.components.response.chunk_size=null or use a frozen teacher")
    if ts.cotrain.ce_weight < 0:
        problems.append(f"teacher_strategy.cotrain.ce_weight={ts.cotrain.ce_weight} must be >= 0")
    if ts.cotrain.learning_rate is not None and ts.cotrain.learning_rate <= 0:
        problems.append(f"teacher_strategy.cotrain.learning_rate={ts.cotrain.learning_rate} must be > 0 or null")
    return problems


def prepare_teacher(ctx: TeacherContext) -> PreTrainedModel:
    teacher = TEACHER_INITS.get(ctx.settings.strategy.init)(ctx)
    trainable = bool(ctx.settings.strategy.trainable)
    teacher.requires_grad_(trainable)
    teacher.train(trainable)
    log.info("teacher strategy %s: init=%s, %s", ctx.settings.strategy.name, ctx.settings.strategy.init,
             "co-trained" if trainable else "frozen")
    return teacher
