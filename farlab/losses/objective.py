"""The whole distillation objective: ``total = ce_weight * ce + alpha * sum_i w_i(step) * component_i``.

``build_objective`` turns the three config groups plus the two model shapes into a
:class:`DistillationObjective` (an ``nn.Module``: its projections train with the student and belong in
the optimizer and the checkpoint). Component types are a registry, so a new kind of term is one builder
plus one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from farlab.losses.attention import AttentionKL
from farlab.losses.base import DistillBatch, LossComponent
from farlab.losses.feature import FeatureLoss
from farlab.losses.layer_map import build_layer_map
from farlab.losses.projection import build_projection
from farlab.registry import Registry
from farlab.losses.response import ResponseLoss
from farlab.losses.spec import (
    LayerMapConfig,
    ProjectionConfig,
    cfg_get,
    validate_layer_map_config,
    validate_loss_config,
    validate_projection_config,
)
from farlab.losses.staged import Phase, Schedule

BALANCE_EPS = 1e-8


@dataclass
class ModelShape:
    """The three numbers the loss builder needs from a model, without loading it."""

    num_layers: int
    hidden_size: int
    num_heads: int = 1

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelShape:
        """From a ``transformers`` config (uses ``text_config`` for multimodal models)."""
        c = getattr(config, "text_config", None) or config
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or getattr(c, "dim", None)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None) or 1
        if layers is None or hidden is None:
            raise ValueError(f"cannot read num_hidden_layers/hidden_size from {type(config).__name__}")
        return cls(int(layers), int(hidden), int(heads))


@dataclass
class _Ctx:
    loss: Any
    layer_map: Any
    projection: Any
    student: ModelShape
    teacher: ModelShape

    def pairs(self) -> list[tuple[int, int]]:
        lm = self.layer_map
        pairs = cfg_get(lm, "pairs")
        return build_layer_map(
            cfg_get(lm, "strategy", "uniform"),
            self.student.num_layers,
            self.teacher.num_layers,
            n=cfg_get(lm, "n"),
            pairs=None if pairs is None else [list(p) for p in pairs],
        )


def _response(ctx: _Ctx, comp: Any) -> LossComponent:
    return ResponseLoss(
        fn=cfg_get(comp, "fn", "kl"),
        temperature=float(cfg_get(ctx.loss, "temperature", 2.0)),
        beta=float(cfg_get(comp, "beta", 0.5)),
        skew=float(cfg_get(comp, "skew", 0.1)),
        chunk_size=cfg_get(comp, "chunk_size"),
        topk_tail=cfg_get(comp, "topk_tail", "renormalize"),
    )


def _feature(ctx: _Ctx, comp: Any) -> LossComponent:
    pairs = ctx.pairs()
    p = ctx.projection
    projections = [
        build_projection(
            cfg_get(p, "type", "linear"),
            ctx.student.hidden_size,
            ctx.teacher.hidden_size,
            layernorm=bool(cfg_get(p, "layernorm", False)),
            hidden_size=cfg_get(p, "hidden_size"),
        )
        for _ in pairs
    ]
    return FeatureLoss(cfg_get(comp, "fn", "mse"), pairs, projections)


def _attention(ctx: _Ctx, comp: Any) -> LossComponent:
    pairs = [(s, t) for s, t in ctx.pairs() if s >= 1 and t >= 1]  # embeddings have no attention map
    if not pairs:
        raise ValueError("attention loss: the layer map has no block pairs (only layer 0 = embeddings)")
    return AttentionKL(pairs, fn=cfg_get(comp, "fn", "kl"))


COMPONENT_BUILDERS: Registry[Callable[[_Ctx, Any], LossComponent]] = Registry("component type")
COMPONENT_BUILDERS.register("response", _response)
COMPONENT_BUILDERS.register("feature", _feature)
COMPONENT_BUILDERS.register("attention", _attention)


class DistillationObjective(nn.Module):
    """CE plus weighted distillation components; weights may follow a stateless :class:`Schedule`."""

    def __init__(
        self,
        components: Mapping[str, LossComponent],
        weights: Mapping[str, float],
        alpha: float = 0.5,
        ce_weight: float = 1.0,
        balance: bool = False,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__()
        self.components = nn.ModuleDict(dict(components))
        self.base_weights = {k: float(weights[k]) for k in components}
        self.alpha, self.ce_weight, self.balance, self.schedule = float(alpha), float(ce_weight), balance, schedule

    # ------------------------------------------------------------------ what the trainer must provide

    @property
    def needs_teacher(self) -> bool:
        return len(self.components) > 0 and self.alpha > 0

    @property
    def needs_hidden_states(self) -> bool:
        return any(c.needs_hidden_states for c in self.components.values())

    @property
    def needs_attentions(self) -> bool:
        return any(c.needs_attentions for c in self.components.values())

    @property
    def needs_final_hidden(self) -> bool:
        """A chunked response loss wants ``final_hidden`` + ``lm_head`` (and no full logits)."""
        return any(getattr(c, "needs_final_hidden", False) for c in self.components.values())

    @property
    def lm_chunk_size(self) -> int | None:
        """Rows per chunk of the chunked LM response path (None = dense logits)."""
        sizes = [c.chunk_size for c in self.components.values() if getattr(c, "needs_final_hidden", False)]
        return min(sizes) if sizes else None

    # ------------------------------------------------------------------ schedule

    def weights(self, step: int, max_steps: int) -> dict[str, float]:
        """``w_i(step)``: schedule weights if a schedule is set, else each component's own weight."""
        if self.schedule is None:
            return dict(self.base_weights)
        return self.schedule.weights(step, max_steps)

    def phase(self, step: int, max_steps: int) -> int:
        """Index of the current schedule phase (0 without a schedule), for logging."""
        return 0 if self.schedule is None else self.schedule.phase(step, max_steps)

    # ------------------------------------------------------------------ loss

    def forward(
        self, batch: DistillBatch | None, ce: Tensor | float | None, step: int = 0, max_steps: int = 1
    ) -> tuple[Tensor, dict[str, float]]:
        """Returns ``(total, parts)``; ``parts`` holds detached floats: ``ce`` and, per component,
        ``<name>/raw``, ``<name>/weight`` (``w_i(step)``), ``<name>/weighted`` (its share of ``total``),
        plus ``<name>/scale`` when ``balance`` is on and ``<name>/teacher_entropy`` for response components
        (mean entropy of the softened teacher targets, nats). A component whose weight is 0 at this step is not
        computed (raw = 0); its parameters join the graph with a zero factor so DDP sees them used."""
        ce = torch.zeros(()) if ce is None else torch.as_tensor(ce)  # None: no labels (pure distillation)
        parts: dict[str, float] = {"ce": float(ce.detach())}
        total = self.ce_weight * ce
        if not self.needs_teacher:
            return total, parts
        if batch is None:
            raise ValueError("this objective has distillation components and needs a DistillBatch")
        weights = self.weights(step, max_steps)
        for name, comp in self.components.items():
            w = weights[name]
            if w == 0.0:
                params = [p for p in comp.parameters() if p.requires_grad]
                if params:
                    total = total + 0.0 * sum(p.sum() for p in params)
                raw = contrib = 0.0
                scale = 1.0
            else:
                value = comp(batch)
                scale_t = ce.detach().abs() / (value.detach().abs() + BALANCE_EPS) if self.balance else 1.0
                term = self.alpha * w * scale_t * value
                total = total + term
                raw, contrib, scale = float(value.detach()), float(term.detach()), float(scale_t)
            parts[f"{name}/raw"], parts[f"{name}/weight"], parts[f"{name}/weighted"] = raw, w, contrib
            entropy = getattr(comp, "teacher_entropy", None) if w != 0.0 else None  # response components
            if entropy is not None:
                parts[f"{name}/teacher_entropy"] = float(entropy)
            if self.balance:
                parts[f"{name}/scale"] = scale
        return total, parts


def build_objective(
    loss_cfg: Any,
    layer_map_cfg: Any = None,
    projection_cfg: Any = None,
    student: ModelShape | None = None,
    teacher: ModelShape | None = None,
) -> DistillationObjective:
    """Validate the configs and build the objective. ``teacher`` may be None only when no teacher is
    needed (``alpha == 0`` or no components; those objectives are plain CE and build no components)."""
    validate_loss_config(loss_cfg)
    alpha = float(cfg_get(loss_cfg, "alpha", 0.5))
    ce_weight = float(cfg_get(loss_cfg, "ce_weight", 1.0))
    comps_cfg = dict(cfg_get(loss_cfg, "components") or {})
    if alpha == 0 or not comps_cfg:
        return DistillationObjective({}, {}, alpha=alpha, ce_weight=ce_weight)
    if student is None or teacher is None:
        raise ValueError(f"loss {cfg_get(loss_cfg, 'name', '')!r} has components {sorted(comps_cfg)} and needs "
                         "both student and teacher ModelShape")
    layer_map_cfg = LayerMapConfig() if layer_map_cfg is None else layer_map_cfg
    projection_cfg = ProjectionConfig() if projection_cfg is None else projection_cfg
    types = {cfg_get(c, "type", "response") for c in comps_cfg.values()}
    if types & {"feature", "attention"}:
        validate_layer_map_config(layer_map_cfg)
    if "feature" in types:
        validate_projection_config(projection_cfg)
    ctx = _Ctx(loss_cfg, layer_map_cfg, projection_cfg, student, teacher)
    components = {
        name: COMPONENT_BUILDERS.get(cfg_get(c, "type", "response"))(ctx, c) for name, c in comps_cfg.items()
    }
    weights = {name: float(cfg_get(c, "weight", 1.0)) for name, c in comps_cfg.items()}
    schedule = None
    sched_cfg = cfg_get(loss_cfg, "schedule")
    if sched_cfg is not None:
        phases = [
            Phase(float(cfg_get(p, "until")), {k: float(v) for k, v in (cfg_get(p, "weights") or {}).items()})
            for p in cfg_get(sched_cfg, "phases")
        ]
        schedule = Schedule(phases, list(components), unit=cfg_get(sched_cfg, "unit", "fraction"),
                            ramp=cfg_get(sched_cfg, "ramp", "step"))
    return DistillationObjective(
        components, weights, alpha=alpha, ce_weight=ce_weight,
        balance=bool(cfg_get(loss_cfg, "balance", False)), schedule=schedule,
    )


def lm_chunk_size(loss_cfg: Any) -> int | None:
    """The chunk size a loss config asks for, from the config alone (before the objective is built)."""
    sizes = [
        int(cfg_get(c, "chunk_size"))
        for c in (cfg_get(loss_cfg, "components") or {}).values()
        if cfg_get(c, "type", "response") == "response" and cfg_get(c, "chunk_size") is not None
    ]
    return min(sizes) if sizes else None
