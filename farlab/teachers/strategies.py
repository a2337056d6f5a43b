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

from farlab.data.base import TaskData
from farlab.losses.objective import build_objective
from farlab.losses.spec import LossConfig
from farlab.models.loading import head_for, model_shape
from farlab.models.pair import DistillationModule
from farlab.registry import Registry
from farlab.teachers.store import TeacherStore
from farlab.trainer.fit import FitSettings, make_trainer

log = logging.getLogger(__name__)


@dataclass
class TeacherContext:
    cfg: DictConfig
    base_teacher: PreTrainedModel | None  # None: built on first use by base() (cache/openai backends may not need it)
    data: TaskData
    tokenizer: Any
    attn_implementation: str | None

    def base(self) -> PreTrainedModel:
        """The base teacher, built (seeded as in train.py) the first time a strategy needs it."""
        if self.base_teacher is None:
            from farlab.models.loading import build_model, check_vocab

            set_seed(self.cfg.seed)
            self.base_teacher = build_model(self.cfg.model.teacher, head_for(self.data), self.attn_implementation)
            check_vocab(self.base_teacher, self.tokenizer, "teacher")
        return self.base_teacher


TeacherInit = Callable[[TeacherContext], PreTrainedModel]
TEACHER_INITS: Registry[TeacherInit] = Registry("teacher_strategy.init")


@TEACHER_INITS.register("base")
def _base(ctx: TeacherContext) -> PreTrainedModel:
    return ctx.base()


@TEACHER_INITS.register("sft")
def _sft(ctx: TeacherContext) -> PreTrainedModel:
    cfg = ctx.cfg
    store = TeacherStore(cfg.teacher_strategy.store_dir)
    material = sft_store_material(cfg)
    name = f"{cfg.task.name}-{cfg.model.teacher.name}-seed{cfg.seed}"
    path, _ = store.get_or_train(name, material, lambda out: train_sft_teacher(ctx, out))
    kwargs = {"attn_implementation": ctx.attn_implementation} if ctx.attn_implementation else {}
    return head_for(ctx.data).auto_class.from_pretrained(path, **kwargs)


def sft_store_material(cfg: DictConfig) -> dict[str, Any]:
    """What identifies an SFT teacher: task (data and limits), teacher model, tokenizer, seed, recipe."""
    return {
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "teacher": OmegaConf.to_container(cfg.model.teacher, resolve=True),
        "tokenizer": cfg.model.tokenizer,
        "seed": cfg.seed,
        "recipe": OmegaConf.to_container(cfg.teacher_strategy.recipe, resolve=True),
    }


def train_sft_teacher(ctx: TeacherContext, out_dir: Path) -> None:
    """Fine-tune the base teacher with CE alone, by the same Trainer the students use."""
    cfg = ctx.cfg
    set_seed(cfg.seed)
    ce_only = OmegaConf.structured(LossConfig(name="ce", alpha=0.0, components={}))
    objective = build_objective(ce_only, cfg.layer_map, cfg.projection, model_shape(ctx.base()), None)
    pair = DistillationModule(ctx.base(), None, objective, kind=ctx.data.kind)
    recipe = cfg.teacher_strategy.recipe
    settings = FitSettings.from_config(
        recipe,
        logging_steps=cfg.train.logging_steps,
        progress_bar=cfg.train.progress_bar,
        save_checkpoints=False,
    )
    trainer = make_trainer(pair, ctx.data, ctx.tokenizer, out_dir / "run", settings, cfg.seed)
    trainer.train()
    ctx.base().save_pretrained(out_dir)
    ctx.tokenizer.save_pretrained(out_dir)


def prepare_teacher(ctx: TeacherContext) -> PreTrainedModel:
    teacher = TEACHER_INITS.get(ctx.cfg.teacher_strategy.init)(ctx)
    trainable = bool(ctx.cfg.teacher_strategy.trainable)
    teacher.requires_grad_(trainable)
    teacher.train(trainable)
    log.info("teacher strategy %s: init=%s, %s", ctx.cfg.teacher_strategy.name, ctx.cfg.teacher_strategy.init,
             "co-trained" if trainable else "frozen")
    return teacher
