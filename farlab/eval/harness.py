"""lm-evaluation-harness on the run's in-memory models: ``eval.harness.tasks=[...]`` (docs/harness.md).

lm-eval's HF backend (``HFLM``) is handed the model object itself, so nothing is written to disk twice and the
scores are those of exactly the weights farlab trained (adapters included). Tasks are looked up by name in
farlab's local task folder (``farlab/assets/harness_tasks``: Europarl tasks that need no network), then
``eval.harness.include_path``, then, with ``include_defaults``, lm-eval's own tasks (hub data: online machines).
The harness must not change the run: the global RNG states are restored afterwards and each model's train/eval
mode is put back.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farlab.config import PACKAGE_ROOT
from farlab.errors import ConfigError
from farlab.registry import unknown_choice_message

log = logging.getLogger(__name__)

LOCAL_TASKS = PACKAGE_ROOT / "assets" / "harness_tasks"
Scores = dict[str, dict[str, dict[str, Any]]]  # {role: {task: {metric: value}}}


def task_manager(settings: Any, data_dir: str | None, include_defaults: bool | None = None) -> Any:
    """lm-eval's TaskManager over farlab's local tasks (+ include_path, + lm-eval's own with include_defaults).

    ``data_dir`` reaches the local tasks' dataset loaders through the task metadata (farlab's ``paths.data``).
    """
    from lm_eval.tasks import TaskManager

    paths = [str(LOCAL_TASKS), *([settings.include_path] if settings.include_path else [])]
    defaults = settings.include_defaults if include_defaults is None else include_defaults
    return TaskManager(include_path=paths, include_defaults=defaults, metadata={"data_dir": data_dir})


def local_task_names() -> list[str]:
    """The task names farlab ships (and their tags), for error messages and docs."""
    return sorted(task_manager(_Bare(), None, include_defaults=False).all_tasks)


@dataclass
class _Bare:
    include_path: str | None = None
    include_defaults: bool = False


def harness_problems(settings: Any, data_dir: str | None) -> list[str]:
    """Unknown task names and a missing include_path, found before any model loads."""
    if not settings.tasks:
        return []
    if settings.include_path and not Path(settings.include_path).is_dir():
        return [f"eval.harness.include_path={settings.include_path!r} is not a folder of lm-eval task YAMLs"]
    known = set(task_manager(settings, data_dir).all_tasks)
    problems = []
    for name in settings.tasks:
        if name in known:
            continue
        msg = unknown_choice_message("harness task", name, known if settings.include_defaults else
                                     local_task_names() + _include_path_names(settings), "eval.harness.tasks")
        if not settings.include_defaults and name in _lm_eval_task_names():
            msg += (f"; {name!r} is one of lm-eval's own tasks: set eval.harness.include_defaults=true on a machine "
                    "that can download its data (docs/harness.md)")
        problems.append(msg)
    return problems


def _include_path_names(settings: Any) -> list[str]:
    if not settings.include_path:
        return []
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=settings.include_path, include_defaults=False).all_tasks


def _lm_eval_task_names() -> set[str]:
    from lm_eval.tasks import TaskManager

    return set(TaskManager(include_defaults=True).all_tasks)


def harness_model_problem(settings: Any, decoder_only: bool, kind: str) -> str | None:
    """lm-eval scores text continuations: only a causal LM (a text decoder) can run it."""
    if settings.tasks and not decoder_only:
        return (f"eval.harness.tasks={list(settings.tasks)} needs a causal language model, but task kind {kind!r} "
                "builds a model without a text decoder head (e.g. a classifier); drop eval.harness.tasks or use a "
                "causal LM task such as task=europarl_en_fr")
    return None


@contextlib.contextmanager
def preserved_state(models: Mapping[str, torch.nn.Module | None]) -> Iterator[None]:
    """Restore Python/NumPy/torch RNG states (lm-eval seeds them) and each model's training flag."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    modes = {role: m.training for role, m in models.items() if m is not None}
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        for role, training in modes.items():
            models[role].train(training)  # type: ignore[union-attr]


def task_scores(results: dict[str, Any], task: str) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": 0.3, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.3, "n": 16}``:
    numbers only, the filter suffix dropped when it is ``none``."""
    out: dict[str, Any] = {}
    for key, value in results["results"][task].items():
        name, _, filt = key.partition(",")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "sample_len":
            out[name if filt in ("", "none") else f"{name}_{filt}"] = float(value)
    samples = results.get("n-samples", {}).get(task, {})
    if "effective" in samples:
        out["n"] = int(samples["effective"])
    return out


@dataclass
class Harness:
    """Runs the configured tasks on models held in memory; one instance per run."""

    settings: Any  # HarnessConfig
    tokenizer: Any
    data_dir: str | None
    score_teacher: bool = True  # the teacher shares the student's tokenizer and settings.teacher is on
    notes: dict[str, str] = field(default_factory=dict)  # why a role has no scores

    def evaluate_model(self, model: torch.nn.Module) -> dict[str, dict[str, Any]]:
        """``{task: {metric: value}}`` for one model."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        s = self.settings
        lm = HFLM(pretrained=model, tokenizer=self.tokenizer, backend="causal", batch_size=s.batch_size)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(s.tasks), task_manager=task_manager(s, self.data_dir), limit=s.limit,
            num_fewshot=s.num_fewshot, bootstrap_iters=s.bootstrap_iters, log_samples=False,
        )
        return {task: task_scores(results, task) for task in sorted(results["results"])}

    def evaluate(self, models: Mapping[str, torch.nn.Module | None], stage: str) -> Scores:
        """``{role: {task: metrics}}`` at ``stage`` (pre | post); a role without a model gets a note instead."""
        chosen = {}
        for role, model in models.items():
            if role == "teacher" and not self.score_teacher:
                self.notes.setdefault("teacher", "not scored: eval.harness.teacher=false, or the teacher has its "
                                                 "own tokenizer (model.teacher_tokenizer)")
            elif model is None and role == "teacher" and stage == "post" and "teacher" not in self.notes:
                self.notes["teacher_post"] = "frozen teacher: scored before training only (training leaves it as is)"
            elif model is None:
                self.notes.setdefault(role, "no model in this process (no KD loss, or a cache/openai backend)")
            else:
                chosen[role] = model
        log.info("lm-eval harness (%s): %s on %s", stage, ", ".join(self.settings.tasks), ", ".join(chosen))
        with preserved_state(chosen), torch.no_grad():
            return {role: self.evaluate_model(m) for role, m in chosen.items()}

    def report(self, pre: Scores, post: Scores) -> dict[str, Any]:
        """The ``metrics["harness"]`` block: ``{"pre": {role: {task: metrics}}, "post": ..., settings, notes}``."""
        import lm_eval

        s = self.settings
        return {"pre": pre, "post": post, "tasks": list(s.tasks), "limit": s.limit, "num_fewshot": s.num_fewshot,
                "lm_eval_version": getattr(lm_eval, "__version__", "unknown"), "notes": dict(self.notes)}


def build_harness(settings: Any, tokenizer: Any, data_dir: str | None, task_kind: Any,
                  teacher_tokenizer: str | None = None) -> Harness | None:
    """The run's harness, or None when ``eval.harness.tasks`` is empty; refuses a model that is no causal LM."""
    if not settings.tasks:
        return None
    problem = harness_model_problem(settings, task_kind.decoder_only, task_kind.name)
    if problem:
        raise ConfigError(problem)
    return Harness(settings, tokenizer, data_dir, score_teacher=settings.teacher and teacher_tokenizer is None)
