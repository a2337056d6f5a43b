"""``teacher.backend=cache``: teacher top-k log-probs (and optionally hidden states) read from disk.

The teacher model is loaded only to build a missing entry (or to evaluate it once on a new eval set); a run
that finds its cache complete never builds, loads or runs the teacher. See :mod:`farlab.teachers.cache`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from farlab import distributed
from farlab.losses.base import ModelView
from farlab.teachers.backends.base import DEFAULT_TOP_K, PreparedTeacher, TeacherBackend, TeacherOutput

if TYPE_CHECKING:
    from farlab.teachers.cache import TeacherCache

log = logging.getLogger(__name__)


class CacheBackend(TeacherBackend):
    name = "cache"

    def __init__(self, cache: TeacherCache, num_layers: int) -> None:
        self.cache, self.num_layers = cache, num_layers

    def __call__(
        self, batch: dict[str, Tensor], *, hidden_states: bool, attentions: bool, grad: bool, detach: bool
    ) -> TeacherOutput:
        device = batch["input_ids"].device
        top = self.cache.topk(batch)
        top.ids, top.logprobs = top.ids.to(device), top.logprobs.to(device)
        hidden = None
        if hidden_states:
            stored = self.cache.hidden_states(batch, self.num_layers)
            hidden = tuple(None if h is None else h.to(device) for h in stored)
        view = ModelView(topk=top, hidden_states=hidden)  # type: ignore[arg-type]
        return TeacherOutput(view=view, loss=None, forwards=0)


def prepare_cache(ctx: Any, load_teacher: Callable[[Any], Any], force_build: bool = False) -> PreparedTeacher:
    """Find (or build) the entry for this run, and the teacher's eval metrics for this eval set."""
    from farlab.eval.loop import evaluate_model
    from farlab.models.loading import head_for, spec_shape
    from farlab.teachers.cache import cache_key, dataset_fingerprint, entry_path, open_or_build, write_cache

    settings, data = ctx.settings, ctx.data
    cache_cfg = settings.backend.cache
    k = settings.backend.top_k or DEFAULT_TOP_K
    head = head_for(data)
    t_shape = spec_shape(settings.model.teacher, head)
    layers = []
    if cache_cfg.hidden_states:
        s_shape = spec_shape(settings.model.student, head, teacher=t_shape)
        layers = ctx.plan.hidden_teacher_layers(settings.layer_map, s_shape, t_shape)
    key = cache_key(settings, data, k, layers)
    entry = entry_path(settings, key)
    loaded: dict[str, Any] = {}

    def teacher() -> Any:
        if "model" not in loaded:
            loaded["model"] = load_teacher(ctx)
        return loaded["model"]

    def build(staging: Any) -> None:
        write_cache(teacher(), data, staging, key, batch_size=cache_cfg.batch_size)

    builder = build if (cache_cfg.build or force_build) else None
    # Across processes rank 0 builds the entry while the others wait; then every rank opens the complete entry.
    distributed.on_main(lambda: open_or_build(entry, key, builder).path)
    cache = open_or_build(entry, key, builder)
    eval_fp = dataset_fingerprint(data.eval)

    def teacher_metrics() -> dict[str, Any]:
        metrics = cache.metrics(eval_fp)
        if metrics is None:  # first run on this eval set: evaluate the teacher once, for every later run
            metrics = evaluate_model(teacher(), data, settings.eval_batch_size, "pre-eval teacher", settings.progress)
            cache.save_metrics(eval_fp, metrics)
        return metrics

    metrics = distributed.on_main(teacher_metrics)
    log.info("teacher cache %s: k=%d, %d rows, teacher %s", cache.path, cache.k, cache.meta["rows"],
             "loaded for the build" if loaded else "not loaded")
    return PreparedTeacher(
        model=None,
        shape=t_shape,
        vocab_size=cache.vocab_size,
        metrics=metrics,
        make_backend=lambda _teacher: CacheBackend(cache, t_shape.num_layers),
        cache=cache,
        loaded_teacher=bool(loaded),
    )


def validate_cache(cfg: Any, plan: Any) -> list[str]:
    from farlab.registry import unknown_choice_message
    from farlab.teachers.cache import CODECS

    c = cfg.teacher.cache
    problems = []
    if c.dtype not in CODECS:
        problems.append(unknown_choice_message("teacher.cache.dtype", c.dtype, CODECS.names()))
    if c.batch_size < 1:
        problems.append(f"teacher.cache.batch_size={c.batch_size} must be >= 1")
    if plan.needs_hidden_states and not c.hidden_states:
        problems.append("feature losses with teacher.backend=cache need the teacher's hidden states in the cache: "
                        "set teacher.cache.hidden_states=true (stores the layers the layer map uses)")
    gkd = cfg.loss.get("gkd")
    if gkd is not None and gkd.lambda_ > 0:
        problems.append(f"loss.gkd.lambda_={gkd.lambda_}: on-policy batches are new student samples no cache holds; "
                        "use teacher=hf or teacher=openai (or lambda_=0)")
    return problems
