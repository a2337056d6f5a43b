"""What a task handler hands to the rest of the run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets


class DataError(ValueError):
    """A data file is missing, malformed or holds values outside the task's label set."""


@dataclass
class TaskData:
    """Tokenized splits plus the facts the model loader and the evaluator need."""

    name: str
    kind: str  # "classification" (more families arrive with their handlers)
    train: datasets.Dataset
    eval: datasets.Dataset
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    label_names: list[str]
    metrics: list[str]
    primary_metric: str
    eval_split_name: str = "dev"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
