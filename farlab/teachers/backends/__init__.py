"""Teacher backends: where a run's teacher outputs come from, one registry entry per ``teacher.backend``.

* ``hf``: the in-process model (dense logits, or its top-k with ``teacher.top_k``); hidden states and
  attention maps; the only backend a co-trained teacher can use.
* ``cache``: top-k log-probs (and optionally hidden states) on disk, built once per key
  (:mod:`farlab.teachers.cache`); the teacher is never loaded once the cache exists.
* ``openai``: an OpenAI-compatible server's prompt logprobs (:mod:`farlab.teachers.openai_client`).
* ``self``: the student itself with its LoRA adapters disabled; no second model (:mod:`.self_teacher`).

Every backend turns a collated training batch into a :class:`~farlab.losses.base.ModelView`, so the losses
and :class:`~farlab.trainer.pair.DistillationModule` do not know which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf, open_dict

from farlab.config import CacheBackendConfig, OpenAIBackendConfig
from farlab.losses.plan import ATTENTIONS, DISTRIBUTION, HIDDEN_STATES, LossPlan
from farlab.models.loading import model_shape
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
from farlab.teachers.backends.self_teacher import prepare_self, validate_self
from farlab.teachers.tokenizers import logit_width


def _prepare_hf(ctx: Any, load_teacher: Callable[[Any], Any]) -> PreparedTeacher:
    chunk = ctx.plan.chunk_size if ctx.data.task_kind.decoder_only else None  # see farlab.models.forward
    teacher = load_teacher(ctx)
    return PreparedTeacher(model=teacher, shape=model_shape(teacher), vocab_size=logit_width(teacher, ctx.data.kind),
                           make_backend=hf_backend_factory(ctx.settings.backend.top_k, chunk))


@dataclass(frozen=True)
class BackendKind:
    """One ``teacher`` option: its setup, what it can serve, its settings section and its own config checks.

    ``prepare(ctx, load_teacher)`` gets the teacher strategy's loader (``strategies.prepare_teacher``) and calls
    it only when it needs the model. ``provides`` lists the teacher outputs (:mod:`farlab.losses.plan`) it can
    give; a loss needing more is refused before any model loads. ``in_process`` backends run the teacher here
    (train.py builds it before the student) and are the only ones a co-trained teacher can use.
    """

    prepare: Callable[[Any, Callable[[Any], Any]], PreparedTeacher]
    provides: frozenset[str]
    validate: Callable[[Any, LossPlan], list[str]] = field(default=lambda cfg, plan: [])
    settings: type | None = None  # the schema of ``teacher.<name>``; None = no section
    in_process: bool = False
    serves: str = ""  # what it serves, in words, for error messages
    dense: bool = False  # serves dense logits without being in_process (teacher=self runs the student)


TEACHER_BACKENDS: Registry[BackendKind] = Registry("teacher.backend")
TEACHER_BACKENDS.add("hf", BackendKind(_prepare_hf, frozenset({DISTRIBUTION, HIDDEN_STATES, ATTENTIONS}),
                                       in_process=True))
TEACHER_BACKENDS.add("cache", BackendKind(
    prepare_cache, frozenset({DISTRIBUTION, HIDDEN_STATES}), validate_cache, CacheBackendConfig,
    serves="teacher=cache stores top-k log-probs and hidden states, not attention maps"))
TEACHER_BACKENDS.add("openai", BackendKind(
    prepare_openai, frozenset({DISTRIBUTION}), validate_openai, OpenAIBackendConfig,
    serves="an OpenAI-compatible server returns prompt logprobs only"))

TEACHER_BACKENDS.add("self", BackendKind(prepare_self, frozenset({DISTRIBUTION, HIDDEN_STATES, ATTENTIONS}),
                                         validate_self, dense=True))

OUTPUT_NAMES = {HIDDEN_STATES: "hidden states", ATTENTIONS: "attention maps", DISTRIBUTION: "output distribution"}


def fill_backend_settings(teacher_cfg: Any) -> None:
    """``teacher.backend=<name>`` set alone (not through ``teacher=<name>``) gets its section's defaults."""
    kind = TEACHER_BACKENDS.get(teacher_cfg.backend)
    name = teacher_cfg.backend
    if kind.settings is not None and teacher_cfg.get(name) is None:
        with open_dict(teacher_cfg):
            teacher_cfg[name] = OmegaConf.structured(kind.settings)


def teacher_problems(cfg: Any, plan: LossPlan) -> list[str]:
    """Model-free checks of ``teacher.*`` against the loss plan and the strategy; returns the problems found."""
    from farlab.losses.gkd import gkd_problems

    t = cfg.teacher
    if t.backend not in TEACHER_BACKENDS:
        return [unknown_choice_message("teacher.backend", t.backend, TEACHER_BACKENDS.names())]
    fill_backend_settings(t)
    kind = TEACHER_BACKENDS.get(t.backend)
    problems = gkd_problems(cfg.loss.get("gkd"), plan)
    if t.top_k is not None and t.top_k < 1:
        problems.append(f"teacher.top_k={t.top_k} must be >= 1 (or null: dense for hf, {DEFAULT_TOP_K} otherwise)")
    if not plan.needs_teacher:
        return problems  # no teacher in this run
    if not kind.in_process and cfg.teacher_strategy.trainable:
        problems.append(f"teacher_strategy={cfg.teacher_strategy.name} co-trains the teacher, whose outputs change "
                        f"every step; teacher.backend={t.backend} would serve stale ones: use teacher=hf")
    for output in plan.unserved(kind.provides):
        needing = sorted({c.cls.kind for c in plan.active if output in c.cls_outputs})
        problems.append(f"{'/'.join(needing)} losses need the teacher's {OUTPUT_NAMES[output]}, which "
                        f"teacher.backend={t.backend} cannot serve ({kind.serves}): use teacher=hf, or "
                        "losses without that term")
    if not (kind.in_process or kind.dense) or t.top_k is not None:
        for comp in plan.full_logit_components:
            problems.append(f"component {comp.name!r}: fn={comp.config.fn} compares raw logits, but a top-k teacher "
                            f"(teacher.backend={t.backend}, top_k={t.top_k}) gives log-probs only; use a "
                            "log-prob divergence (kl, reverse_kl, jsd, ...) or teacher=hf with teacher.top_k=null")
    return problems + kind.validate(cfg, plan)


__all__ = [
    "BackendKind", "DEFAULT_TOP_K", "HFBackend", "PreparedTeacher", "TEACHER_BACKENDS",
    "TeacherBackend", "TeacherOutput", "fill_backend_settings", "teacher_problems", "topk_from_logits",
]
