"""Teacher backends: where a run's teacher outputs come from, one registry entry per ``teacher.backend``.

* ``hf``: the in-process model (dense logits, or its top-k with ``teacher.top_k``); hidden states and
  attention maps; the only backend a co-trained teacher can use.
* ``cache``: top-k log-probs (and optionally hidden states) on disk, built once per key
  (:mod:`farlab.teachers.cache`); the teacher is never loaded once the cache exists.
* ``openai``: an OpenAI-compatible server's prompt logprobs (:mod:`farlab.teachers.openai_client`).

Every backend turns a collated training batch into a :class:`~farlab.losses.base.ModelView`, so the losses
and :class:`~farlab.models.pair.DistillationModule` do not know which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farlab.registry import Registry, unknown_choice_message
from farlab.teachers.backends.base import (
    DEFAULT_TOP_K,
    PreparedTeacher,
    TeacherBackend,
    TeacherOutput,
    topk_from_logits,
)
from farlab.teachers.backends.cache import prepare_cache, validate_cache
from farlab.teachers.backends.hf import HFBackend, hf_backend_factory
from farlab.teachers.backends.openai import prepare_openai, validate_openai


def _prepare_hf(ctx: Any, load_teacher: Callable[[Any], Any]) -> PreparedTeacher:
    from farlab.losses.objective import lm_chunk_size
    from farlab.models.loading import model_shape
    from farlab.teachers.tokenizers import logit_width

    chunk = lm_chunk_size(ctx.cfg.loss) if ctx.data.kind == "causal_lm" else None  # see farlab.models.forward
    teacher = load_teacher(ctx)
    return PreparedTeacher(model=teacher, shape=model_shape(teacher), vocab_size=logit_width(teacher, ctx.data.kind),
                           make_backend=hf_backend_factory(ctx.cfg.teacher.top_k, chunk))


@dataclass(frozen=True)
class BackendKind:
    """One ``teacher.backend`` choice: its setup, its model-free config checks, and whether it needs the
    base teacher built up front (train.py builds it before the student, as it always did for hf).

    ``prepare(ctx, load_teacher)`` gets the teacher strategy's loader (``strategies.prepare_teacher``) and
    calls it only when it needs the model."""

    prepare: Callable[[Any, Callable[[Any], Any]], PreparedTeacher]
    validate: Callable[[Any], list[str]] = field(default=lambda cfg: [])
    in_process: bool = False


TEACHER_BACKENDS: Registry[BackendKind] = Registry("teacher.backend")
TEACHER_BACKENDS.add("hf", BackendKind(_prepare_hf, in_process=True))
TEACHER_BACKENDS.add("cache", BackendKind(prepare_cache, validate_cache))
TEACHER_BACKENDS.add("openai", BackendKind(prepare_openai, validate_openai))


def validate_teacher_config(cfg: Any) -> list[str]:
    """Model-free checks of ``teacher.*`` against the loss and strategy; returns the problems found."""
    from farlab.losses.divergences import DIVERGENCES
    from farlab.losses.gkd import gkd_problems

    t = cfg.teacher
    if t.backend not in TEACHER_BACKENDS:
        return [unknown_choice_message("teacher.backend", t.backend, TEACHER_BACKENDS.names())]
    problems = gkd_problems(cfg)
    if t.top_k is not None and t.top_k < 1:
        problems.append(f"teacher.top_k={t.top_k} must be >= 1 (or null: dense for hf, {DEFAULT_TOP_K} otherwise)")
    components = cfg.loss.components or {}
    if not (cfg.loss.alpha > 0 and components):
        return problems  # no teacher in this run
    if t.backend != "hf" and cfg.teacher_strategy.trainable:
        problems.append(f"teacher_strategy={cfg.teacher_strategy.name} co-trains the teacher, whose outputs change "
                        f"every step; teacher.backend={t.backend} would serve stale ones: use teacher.backend=hf")
    if t.backend != "hf" or t.top_k is not None:
        for name, comp in components.items():
            if comp.type == "response" and comp.fn in DIVERGENCES and not DIVERGENCES.get(comp.fn).supports_topk:
                problems.append(f"component {name!r}: fn={comp.fn} compares raw logits, but a top-k teacher "
                                f"(teacher.backend={t.backend}, top_k={t.top_k}) gives log-probs only; use a "
                                "log-prob divergence (kl, reverse_kl, jsd, ...) or teacher.backend=hf with top_k=null")
    return problems + TEACHER_BACKENDS.get(t.backend).validate(cfg)


__all__ = [
    "BackendKind", "DEFAULT_TOP_K", "HFBackend", "PreparedTeacher", "TEACHER_BACKENDS",
    "TeacherBackend", "TeacherOutput", "topk_from_logits", "validate_teacher_config",
]
