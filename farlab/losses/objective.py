"""The whole distillation objective: ``total = ce_weight * ce + alpha * sum_i w_i(step) * component_i``.

``build_objective`` turns the three config groups plus the two model shapes into a
:class:`DistillationObjective` (an ``nn.Module``: its projections train with the student and belong in
the optimizer and the checkpoint). Component types are a registry (:data:`farlab.losses.base.COMPONENT_TYPES`): a new kind of term
is one class that builds itself plus one YAML file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from farlab.losses.base import BuildContext, DistillBatch, LossComponent, ModelShape
from farlab.losses.plan import LossPlan
from farlab.losses.projection import build_projection
from farlab.losses.spec import (
    LayerMapConfig,
    ProjectionConfig,
    typed,
    validate_layer_map_config,
    validate_projection_config,
)
from farlab.losses.staged import Phase, Schedule

__all__ = ["BALANCE_EPS", "DistillationObjective", "ModelShape", "build_objective"]

BALANCE_EPS = 1e-8


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
    def uses_ce(self) -> bool:
        """False for pure distillation (``ce_weight`` 0, no balancing against the CE): the CE need not be computed."""
        return self.ce_weight != 0 or self.balance

    @property
    def needs_hidden_states(self) -> bool:
        return any(c.needs_hidden_states for c in self.components.values())

    @property
    def needs_attentions(self) -> bool:
        return any(c.needs_attentions for c in self.components.values())

    @property
    def lm_chunk_size(self) -> int | None:
        """Rows per chunk of the chunked LM response path (None = dense logits)."""
        sizes = [c.chunk_size for c in self.components.values() if getattr(c, "chunk_size", None)]
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
    """Plan the loss config (a :class:`LossPlan` or a loss config) and build the objective. ``teacher`` may be
    None only when no teacher is needed (``alpha == 0`` or no components: plain CE, no components built)."""
    plan = loss_cfg if isinstance(loss_cfg, LossPlan) else LossPlan.from_config(loss_cfg)
    cfg = plan.config
    if not plan.needs_teacher:
        return DistillationObjective({}, {}, alpha=cfg.alpha, ce_weight=cfg.ce_weight)
    if student is None or teacher is None:
        raise ValueError(f"loss {cfg.name!r} has components {sorted(cfg.components)} and needs "
                         "both student and teacher ModelShape")
    layer_map = typed(LayerMapConfig, layer_map_cfg)
    projection = typed(ProjectionConfig, projection_cfg)
    if plan.uses_layer_map:
        validate_layer_map_config(layer_map)
        validate_projection_config(projection)
    ctx = BuildContext(
        temperature=cfg.temperature,
        student=student,
        teacher=teacher,
        layer_pairs=lambda: plan.layer_pairs(layer_map, student, teacher),
        projection=lambda: build_projection(projection.type, student.hidden_size, teacher.hidden_size,
                                            layernorm=projection.layernorm, hidden_size=projection.hidden_size),
    )
    components = {c.name: c.cls.from_config(c.config, ctx) for c in plan.components}
    weights = {c.name: c.config.weight for c in plan.components}
    schedule = None
    if cfg.schedule is not None:
        phases = [Phase(p.until, dict(p.weights)) for p in cfg.schedule.phases]
        schedule = Schedule(phases, list(components), unit=cfg.schedule.unit, ramp=cfg.schedule.ramp)
    return DistillationObjective(components, weights, alpha=cfg.alpha, ce_weight=cfg.ce_weight,
                                 balance=cfg.balance, schedule=schedule)
