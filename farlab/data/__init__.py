"""Task handlers: one module per task family, one registry from family name to handler.

A handler has two entry points: ``validate(task_cfg)`` (cheap checks before any model loads:
schema, files on disk) and ``build(task_cfg, tokenizer, seed)`` -> :class:`TaskData`.
"""

from __future__ import annotations

from typing import Any, Protocol

from omegaconf import DictConfig

from farlab.data.base import TaskData
from farlab.errors import DataError
from farlab.registry import Registry


class TaskHandler(Protocol):
    def validate(self, task_cfg: DictConfig) -> None: ...

    def build(self, task_cfg: DictConfig, tokenizer: Any, seed: int) -> TaskData: ...


TASK_FAMILIES: Registry[TaskHandler] = Registry("task family")


def _handler(task_cfg: DictConfig) -> TaskHandler:
    family = task_cfg.get("family")
    if family is None:
        raise DataError(f"task {task_cfg.get('name')!r} has no 'family'; valid: {', '.join(TASK_FAMILIES)}")
    return TASK_FAMILIES.get(family)


def validate_task_config(task_cfg: DictConfig) -> None:
    _handler(task_cfg).validate(task_cfg)


def build_task_data(task_cfg: DictConfig, tokenizer: Any, seed: int, distill: Any = None) -> TaskData:
    """``distill``: the run's context-distillation settings; when the teacher is prompted differently, the
    handler adds the teacher's sequences (farlab.data.context)."""
    from farlab.data.context import teacher_prompt

    prompt = teacher_prompt(distill)
    if prompt is None:
        return _handler(task_cfg).build(task_cfg, tokenizer, seed)
    return _handler(task_cfg).build(task_cfg, tokenizer, seed, teacher_prompt=prompt)  # type: ignore[call-arg]


# Handlers register themselves on import.
from farlab.data import glue as _glue  # noqa: E402,F401
from farlab.data import instruction as _instruction  # noqa: E402,F401
from farlab.data import ocr as _ocr  # noqa: E402,F401
from farlab.data import text as _text  # noqa: E402,F401
from farlab.data import text_classification as _text_classification  # noqa: E402,F401
from farlab.data import translation as _translation  # noqa: E402,F401

__all__ = ["DataError", "TaskData", "TASK_FAMILIES", "build_task_data", "validate_task_config"]
