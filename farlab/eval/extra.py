"""Extra evaluation splits: the same models scored on more files of the task (e.g. MNLI dev_mismatched).

A task handler puts them in ``TaskData.extra_eval`` as ``{name: tokenized split}`` (GLUE:
``task.extra_eval_files``, keyed by file stem). The primary eval split stays what ``metrics["pre"]`` and
``metrics["post"]`` report; the extra splits go to ``metrics["extra_eval"][name][stage][role]`` with the same
entries (task metrics, and calibration for classifiers). See docs/run_dir.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from farlab.eval.loop import evaluate_model

if TYPE_CHECKING:  # the data layer sits above eval
    from farlab.data.base import TaskData

Results = dict[str, dict[str, dict[str, Any]]]  # {split: {role: metrics}}


def extra_splits(data: TaskData) -> dict[str, Any]:
    """``{name: split}`` of the task's extra eval splits (empty for tasks without any)."""
    return dict(data.extra_eval)


def evaluate_extra(
    data: TaskData,
    models: Mapping[str, torch.nn.Module | None],
    batch_size: int,
    stage: str,
    progress: bool = True,
) -> Results:
    """``{split: {role: metrics}}`` for every extra split and every model given; a None model (no teacher,
    or one served by a cache/server backend) is skipped."""
    results: Results = {}
    for name, split in extra_splits(data).items():
        view = dataclasses.replace(data, eval=split, eval_split_name=name)
        results[name] = {
            role: evaluate_model(model, view, batch_size, f"{stage}-eval {role} [{name}]", progress)
            for role, model in models.items()
            if model is not None
        }
    return results


def extra_eval_report(pre: Results, post: Results) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """The ``metrics["extra_eval"]`` block: ``{split: {"pre": {role: metrics}, "post": {role: metrics}}}``."""
    return {name: {"pre": pre.get(name, {}), "post": post.get(name, {})} for name in sorted({*pre, *post})}
