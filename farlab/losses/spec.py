"""Structured configs for conf/loss, conf/layer_map and conf/projection, and their model-free validation.

Plain dataclasses with defaults everywhere and only str/int/float/bool/Optional/List/Dict fields, so
Hydra's ConfigStore and ``OmegaConf.structured`` accept them. (No ``from __future__ import annotations``
here: OmegaConf reads the real annotation objects.)

The ``validate_*`` functions need no model: they check names against the registries and numbers against
their ranges, and raise one ValueError listing every problem, each naming the bad value and the valid
choices (with a "did you mean" suggestion for near-miss names).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from farlab.losses.attention import ATTENTION_FNS
from farlab.losses.divergences import TOPK_TAILS
from farlab.losses.feature import FEATURE_FNS
from farlab.losses.layer_map import LAYER_MAPS
from farlab.losses.projection import PROJECTIONS
from farlab.registry import Registry, unknown_choice_message
from farlab.losses.response import RESPONSE_FNS
from farlab.losses.staged import RAMPS, UNITS

# Component type -> registry of the fns it accepts. Also the set of valid component types.
COMPONENT_FNS: Dict[str, Registry] = {"response": RESPONSE_FNS, "feature": FEATURE_FNS, "attention": ATTENTION_FNS}


@dataclass
class ComponentConfig:
    """One loss term. ``beta`` is used by ``jsd``, ``skew`` by ``skew_kl``/``skew_reverse_kl``,
    ``chunk_size`` (rows per chunk; None = dense) and ``topk_tail`` by response components only."""

    type: str = "response"  # response | feature | attention
    fn: str = "kl"
    weight: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    chunk_size: Optional[int] = None
    topk_tail: str = "renormalize"  # renormalize | bucket


@dataclass
class PhaseConfig:
    until: float = 1.0  # phase holds while position < until (steps or fraction of max_steps)
    weights: Dict[str, float] = field(default_factory=dict)  # component name -> weight; missing = 0


@dataclass
class ScheduleConfig:
    unit: str = "fraction"  # step | fraction
    ramp: str = "step"  # step (piecewise constant) | linear (interpolate between boundaries)
    phases: List[PhaseConfig] = field(default_factory=list)


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
    components: Dict[str, ComponentConfig] = field(default_factory=dict)
    schedule: Optional[ScheduleConfig] = None
    gkd: Optional[GKDConfig] = None  # decoder-only tasks: on-policy batches (see conf/loss/gkd.yaml)


@dataclass
class LayerMapConfig:
    strategy: str = "uniform"  # uniform | last_n | first_last | custom
    n: Optional[int] = None  # last_n
    pairs: Optional[List[List[int]]] = None  # custom: [[student_layer, teacher_layer], ...]


@dataclass
class ProjectionConfig:
    type: str = "linear"  # identity | linear | mlp
    layernorm: bool = False
    hidden_size: Optional[int] = None  # mlp hidden width (default: teacher width)


def cfg_get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _raise(what: str, problems: List[str]) -> None:
    if problems:
        raise ValueError(f"invalid {what}:\n  - " + "\n  - ".join(problems))


def _schedule_problems(schedule: Any, names: List[str]) -> List[str]:
    problems: List[str] = []
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
    problems: List[str] = []
    alpha, temperature = float(cfg_get(cfg, "alpha", 0.5)), float(cfg_get(cfg, "temperature", 2.0))
    if alpha < 0:
        problems.append(f"alpha must be >= 0, got {alpha}")
    if float(cfg_get(cfg, "ce_weight", 1.0)) < 0:
        problems.append(f"ce_weight must be >= 0, got {cfg_get(cfg, 'ce_weight')}")
    if not temperature > 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    components = cfg_get(cfg, "components") or {}
    for name, comp in components.items():
        ctype, fn = cfg_get(comp, "type", "response"), cfg_get(comp, "fn", "kl")
        if ctype not in COMPONENT_FNS:
            problems.append(unknown_choice_message("component type", ctype, list(COMPONENT_FNS), f"component {name!r}"))
            continue
        if fn not in COMPONENT_FNS[ctype]:
            problems.append(unknown_choice_message("loss fn", fn, COMPONENT_FNS[ctype].names(), f"component {name!r}"))
        if float(cfg_get(comp, "weight", 1.0)) < 0:
            problems.append(f"component {name!r}: weight must be >= 0, got {cfg_get(comp, 'weight')}")
        beta, skew = float(cfg_get(comp, "beta", 0.5)), float(cfg_get(comp, "skew", 0.1))
        if not 0.0 <= beta <= 1.0:
            problems.append(f"component {name!r}: beta must be in [0, 1], got {beta}")
        if not 0.0 <= skew < 1.0:
            problems.append(f"component {name!r}: skew must be in [0, 1), got {skew}")
        chunk = cfg_get(comp, "chunk_size")
        if chunk is not None and int(chunk) <= 0:
            problems.append(f"component {name!r}: chunk_size must be a positive row count or null, got {chunk}")
        tail = cfg_get(comp, "topk_tail", "renormalize")
        if tail not in TOPK_TAILS:
            problems.append(unknown_choice_message("topk_tail", tail, list(TOPK_TAILS), f"component {name!r}"))
    schedule = cfg_get(cfg, "schedule")
    if schedule is not None:
        problems += _schedule_problems(schedule, list(components))
    _raise(f"loss config {cfg_get(cfg, 'name', '')!r}", problems)


def validate_layer_map_config(cfg: Any) -> None:
    """Names and shapes only; depth fit is checked by :func:`farlab.losses.layer_map.build_layer_map`."""
    problems: List[str] = []
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
    problems: List[str] = []
    ptype, hidden = cfg_get(cfg, "type", "linear"), cfg_get(cfg, "hidden_size")
    if ptype not in PROJECTIONS:
        problems.append(unknown_choice_message("projection type", ptype, PROJECTIONS.names()))
    if hidden is not None and int(hidden) <= 0:
        problems.append(f"projection hidden_size must be > 0 or null, got {hidden}")
    _raise("projection config", problems)
