"""Structured configs for conf/loss, conf/layer_map and conf/projection, and their model-free validation.

Plain dataclasses with defaults everywhere and only str/int/float/bool fields, ``X | None``, ``list`` and ``dict``, so
Hydra's ConfigStore and ``OmegaConf.structured`` accept them. (No ``from __future__ import annotations``
here: OmegaConf reads the real annotation objects.)

Defaults live here and only here: YAML files state what differs from them, and code that reads a config
merges it onto these dataclasses first (:func:`typed`). The ``validate_*`` functions need no model: they check
names against the registries and numbers against their ranges, and raise one ValueError listing every problem,
each naming the bad value and the valid choices (with a "did you mean" suggestion for near-miss names).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from farlab.losses.base import COMPONENT_TYPES
from farlab.losses.divergences import TOPK_TAILS
from farlab.losses.layer_map import LAYER_MAPS
from farlab.losses.projection import PROJECTIONS
from farlab.losses.staged import RAMPS, UNITS
from farlab.registry import unknown_choice_message


@dataclass
class ComponentConfig:
    """One loss term. ``beta`` is used by ``jsd``, ``skew`` by ``skew_kl``/``skew_reverse_kl``, ``mix`` by ``mixed_kl``,
    ``chunk_size`` (rows per chunk; None = dense) and ``topk_tail`` by response components only.

    ``mix`` is its own field rather than ``beta`` because the two mean different things at 0 < x < 1: ``jsd``'s
    beta weights a mixture distribution, ``mixed_kl``'s lambda linearly weights two KLs (only the endpoints agree)."""

    type: str = "response"  # a COMPONENT_TYPES name: response | feature | attention | ...
    fn: str | None = None  # None = the type's default_fn (response kl, feature mse, attention kl)
    weight: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    mix: float = 0.5  # mixed_kl: (1 - mix) KL(p_t || p_s) + mix KL(p_s || p_t); 0 = kl, 1 = reverse_kl
    chunk_size: int | None = None
    topk_tail: str = "renormalize"  # renormalize | bucket


@dataclass
class PhaseConfig:
    until: float = 1.0  # phase holds while position < until (steps or fraction of max_steps)
    weights: dict[str, float] = field(default_factory=dict)  # component name -> weight; missing = 0


@dataclass
class ScheduleConfig:
    unit: str = "fraction"  # step | fraction
    ramp: str = "step"  # step (piecewise constant) | linear (interpolate between boundaries)
    phases: list[PhaseConfig] = field(default_factory=list)


@dataclass
class GKDConfig:
    """On-policy distillation (GKD, Agarwal et al. 2024; farlab.losses.gkd): a fraction ``lambda_`` of the
    training batches is replaced by the student's own sampled continuations of the prompt, scored by the teacher."""

    lambda_: float = 0.5  # fraction of batches that are on-policy (0 = off, 1 = always)
    temperature: float = 1.0  # student sampling temperature
    max_new_tokens: int = 32


@dataclass
class LossConfig:
    """``total = ce_weight * ce + alpha * sum_i w_i(step) * component_i``."""

    name: str = "ce"
    alpha: float = 0.5
    temperature: float = 2.0
    ce_weight: float = 1.0
    balance: bool = False  # rescale each component to |ce| with a detached factor
    components: dict[str, ComponentConfig] = field(default_factory=dict)
    schedule: ScheduleConfig | None = None
    gkd: GKDConfig | None = None  # decoder-only tasks: on-policy batches (see conf/loss/gkd.yaml)


@dataclass
class LayerMapConfig:
    strategy: str = "uniform"  # uniform | last_n | first_last | custom
    n: int | None = None  # last_n
    pairs: list[list[int]] | None = None  # custom: [[student_layer, teacher_layer], ...]


@dataclass
class ProjectionConfig:
    type: str = "linear"  # identity | linear | mlp
    layernorm: bool = False
    hidden_size: int | None = None  # mlp hidden width (default: teacher width)


def cfg_get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def typed(schema: Any, cfg: Any) -> Any:
    """``cfg`` (a dataclass, DictConfig, dict or None) as an instance of ``schema`` with the schema's defaults filled in.

    One road for every reader, so a default is stated once (in the dataclass) and never restated in code.
    """
    if isinstance(cfg, schema):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(schema), {} if cfg is None else cfg)
    return OmegaConf.to_object(merged)


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


def _schedule_problems(schedule: Any, names: list[str]) -> list[str]:
    problems: list[str] = []
    unit, ramp = cfg_get(schedule, "unit", "fraction"), cfg_get(schedule, "ramp", "step")
    phases = cfg_get(schedule, "phases")
    if unit not in UNITS:
        problems.append(unknown_choice_message("schedule unit", unit, list(UNITS)))
    if ramp not in RAMPS:
        problems.append(unknown_choice_message("schedule ramp", ramp, list(RAMPS)))
    if not phases:
        return problems + ["schedule needs at least one phase"]
    bounds = [float(cfg_get(p, "until", 0.0)) for p in phases]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        problems.append(f"schedule phases must have strictly increasing 'until'; got {bounds}")
    if unit == "fraction" and any(not 0.0 <= b <= 1.0 for b in bounds):
        problems.append(f"schedule unit 'fraction' needs every 'until' in [0, 1]; got {bounds}")
    if unit == "step" and any(b < 0 for b in bounds):
        problems.append(f"schedule unit 'step' needs 'until' >= 0; got {bounds}")
    for i, phase in enumerate(phases):
        for comp, w in (cfg_get(phase, "weights") or {}).items():
            if comp not in names:
                problems.append(unknown_choice_message("component", comp, names, f"schedule phase {i}"))
            elif float(w) < 0:
                problems.append(f"schedule phase {i}: weight {w} for {comp!r} must be >= 0")
    return problems


def validate_loss_config(cfg: Any) -> None:
    """Raise ValueError if ``cfg`` (LossConfig, DictConfig or dict) cannot describe a valid objective."""
    cfg = typed(LossConfig, cfg)
    problems: list[str] = []
    if cfg.alpha < 0:
        problems.append(f"alpha must be >= 0, got {cfg.alpha}")
    if cfg.ce_weight < 0:
        problems.append(f"ce_weight must be >= 0, got {cfg.ce_weight}")
    if not cfg.temperature > 0:
        problems.append(f"temperature must be > 0, got {cfg.temperature}")
    for name, comp in cfg.components.items():
        if comp.type not in COMPONENT_TYPES:
            problems.append(unknown_choice_message("component type", comp.type, COMPONENT_TYPES.names(),
                                                   f"component {name!r}"))
            continue
        fns = COMPONENT_TYPES.get(comp.type).fns
        if comp.fn is not None and comp.fn not in fns:
            problems.append(unknown_choice_message("loss fn", comp.fn, fns.names(), f"component {name!r}"))
        if comp.weight < 0:
            problems.append(f"component {name!r}: weight must be >= 0, got {comp.weight}")
        if not 0.0 <= comp.beta <= 1.0:
            problems.append(f"component {name!r}: beta must be in [0, 1], got {comp.beta}")
        if not 0.0 <= comp.skew < 1.0:
            problems.append(f"component {name!r}: skew must be in [0, 1), got {comp.skew}")
        if not 0.0 <= comp.mix <= 1.0:
            problems.append(f"component {name!r}: mix (mixed_kl's lambda) must be in [0, 1], got {comp.mix}")
        if comp.chunk_size is not None and comp.chunk_size <= 0:
            problems.append(f"component {name!r}: chunk_size must be a positive row count or null, got {comp.chunk_size}")
        if comp.topk_tail not in TOPK_TAILS:
            problems.append(unknown_choice_message("topk_tail", comp.topk_tail, list(TOPK_TAILS), f"component {name!r}"))
    if cfg.schedule is not None:
        problems += _schedule_problems(cfg.schedule, list(cfg.components))
    _raise(f"loss config {cfg.name!r}", problems)


def validate_layer_map_config(cfg: Any) -> None:
    """Names and shapes only; depth fit is checked by :func:`farlab.losses.layer_map.build_layer_map`."""
    problems: list[str] = []
    strategy, n, pairs = cfg_get(cfg, "strategy", "uniform"), cfg_get(cfg, "n"), cfg_get(cfg, "pairs")
    if strategy not in LAYER_MAPS:
        problems.append(unknown_choice_message("layer map strategy", strategy, LAYER_MAPS.names()))
    if strategy == "last_n" and (n is None or int(n) < 1):
        problems.append(f"layer map 'last_n' needs n >= 1, got {n}")
    if strategy == "custom":
        if not pairs or any(len(p) != 2 or min(int(x) for x in p) < 0 for p in pairs):
            problems.append(f"layer map 'custom' needs pairs like [[1, 2], [2, 4]] with layers >= 0, got {pairs}")
    _raise("layer map config", problems)


def validate_projection_config(cfg: Any) -> None:
    problems: list[str] = []
    ptype, hidden = cfg_get(cfg, "type", "linear"), cfg_get(cfg, "hidden_size")
    if ptype not in PROJECTIONS:
        problems.append(unknown_choice_message("projection type", ptype, PROJECTIONS.names()))
    if hidden is not None and int(hidden) <= 0:
        problems.append(f"projection hidden_size must be > 0 or null, got {hidden}")
    _raise("projection config", problems)
