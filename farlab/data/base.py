"""What a task handler hands to the rest of the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import datasets
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from farlab.errors import DataError

if TYPE_CHECKING:
    from farlab.data.kinds import TaskKind

C = TypeVar("C")


GENERATION_SPLITS = ("validation", "test")  # eval splits of the generation tasks (seeded, carved from train)


@dataclass
class GenerationConfig:
    """How generation tasks decode their eval prompts (translation, OCR)."""

    max_new_tokens: int = 64
    num_beams: int = 1  # 1 = greedy
    batch_size: int = 16


def metric_fields(cfg: Any) -> dict[str, Any]:
    """``TaskData.metrics`` and ``.primary_metric`` from a task config: the primary metric defaults to the first one."""
    return {"metrics": list(cfg.metrics), "primary_metric": cfg.primary_metric or cfg.metrics[0]}


@dataclass
class TaskData:
    """Tokenized splits plus the facts the model loader and the evaluator need."""

    name: str
    kind: str  # a TASK_KINDS name (farlab.data.kinds): picks the model head, the masks and the evaluator
    train: datasets.Dataset
    eval: datasets.Dataset
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    label_names: list[str]
    metrics: list[str]
    primary_metric: str
    eval_split_name: str = "dev"
    tokenizer: Any = None
    generation: GenerationConfig | None = None  # how generation tasks decode their eval prompts
    prompt_collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None  # vision: eval prompts, left-padded
    normalize: Callable[[str], str] | None = None  # text normaliser applied to predictions and references
    extra_eval: dict[str, datasets.Dataset] = field(default_factory=dict)  # more eval splits by name (farlab.eval.extra)
    info: dict[str, Any] = field(default_factory=dict)  # counts for logs and tests; nothing decides on these
    # Rows an SFT teacher learns from when they differ from ``train`` (no transfer rows, no teacher-made targets).
    sft_train: datasets.Dataset | None = None
    # (example_id, target text) pairs -> a train split with those targets (task.targets=teacher); None = unsupported
    retarget: Callable[[list[tuple[int, str]]], datasets.Dataset] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def gold_only(self) -> TaskData:
        """This task with its gold-labelled training rows only: what an SFT teacher is fine-tuned on."""
        import dataclasses

        return self if self.sft_train is None else dataclasses.replace(self, train=self.sft_train, sft_train=None)

    @property
    def task_kind(self) -> TaskKind:
        """The record of this task's kind: head, masks, predictor, scorer (farlab.data.kinds)."""
        from farlab.data.kinds import TASK_KINDS  # same layer; kinds imports the eval predictors, which import this

        return TASK_KINDS.get(self.kind)


def typed_config(schema: type[C], task_cfg: DictConfig | dict) -> C:
    """Check a task node against its family's schema; unknown keys and wrong types fail here.

    Task families differ in their fields, so the root schema types ``task`` loosely and each handler
    checks its own node with this.
    """
    try:
        # Resolve against the whole config first: paths interpolate ${paths.data}.
        resolved = OmegaConf.to_container(task_cfg, resolve=True) if OmegaConf.is_config(task_cfg) else task_cfg
        merged = OmegaConf.merge(OmegaConf.structured(schema), resolved)
    except OmegaConfBaseException as err:
        name = task_cfg.get("name") if hasattr(task_cfg, "get") else None
        raise DataError(f"task config {name!r}: {err}") from err
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def check_eval_settings(metrics: list[str], primary: str | None, eval_split: str | None = None) -> None:
    """Known metric names, a primary metric among them, and (generation tasks) a known eval split."""
    from farlab.eval.metrics import METRICS  # local: keeps this module free of metric libraries at import
    from farlab.registry import unknown_choice_message

    if eval_split is not None and eval_split not in GENERATION_SPLITS:
        raise DataError(unknown_choice_message("task.eval_split", eval_split, GENERATION_SPLITS))
    if not metrics:
        raise DataError(f"task.metrics is empty; choose at least one of: {', '.join(METRICS.names())}")
    for metric in metrics:
        if metric not in METRICS:
            raise DataError(unknown_choice_message("metric", metric, METRICS.names()))
    if (primary or metrics[0]) not in metrics:
        raise DataError(f"task.primary_metric={primary!r} is not among task.metrics={list(metrics)}")
