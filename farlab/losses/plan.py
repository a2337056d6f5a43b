"""The loss plan: everything a run must know about its loss, decided once from the loss config alone.

Before any model loads, ``LossPlan.from_config(cfg.loss)`` answers: does this run need a teacher, which teacher
outputs (distribution, hidden states, attention maps), eager attention or not, the LM chunk size, its F/A/R cell,
which teacher backends can serve it. Everything else (train.py, the backends, the tokenizer checks, the teacher
cache, the sweeper and the collector) asks the plan; nothing outside ``farlab/losses`` matches component types by
name. What a component type needs is declared once, on its :class:`~farlab.losses.base.LossComponent` class.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from farlab.losses.base import COMPONENT_TYPES, LossComponent, ModelShape
from farlab.losses.divergences import DIVERGENCES
from farlab.losses.layer_map import build_layer_map
from farlab.losses.spec import ComponentConfig, LayerMapConfig, LossConfig, typed, validate_loss_config

FAR_ORDER = "FAR"  # the factorial's letters, in the order cell names use them (combined_far)

# What a teacher backend may be asked for; each backend declares the subset it can serve.
DISTRIBUTION, HIDDEN_STATES, ATTENTIONS = "distribution", "hidden_states", "attentions"


@dataclass(frozen=True)
class ComponentPlan:
    """One configured term: its name, config (``fn`` defaulted by its type) and class."""

    name: str
    config: ComponentConfig
    cls: type[LossComponent]

    @property
    def cls_outputs(self) -> frozenset[str]:
        """The teacher outputs this term reads."""
        c = self.cls
        wanted = {DISTRIBUTION: c.needs_distribution, HIDDEN_STATES: c.needs_hidden_states,
                  ATTENTIONS: c.needs_attentions}
        return frozenset(k for k, v in wanted.items() if v)

    @property
    def needs_full_logits(self) -> bool:
        """True for response fns that compare raw logits (mse, cosine): a top-k teacher cannot serve them."""
        return self.cls.needs_distribution and self.config.fn in DIVERGENCES and not DIVERGENCES.get(
            self.config.fn).supports_topk


@dataclass(frozen=True)
class LossPlan:
    config: LossConfig
    components: tuple[ComponentPlan, ...]

    @classmethod
    def from_config(cls, loss_cfg: Any) -> LossPlan:
        """Validate ``loss_cfg`` (LossConfig, DictConfig or dict) and plan it; ValueError names every problem."""
        validate_loss_config(loss_cfg)
        config = typed(LossConfig, loss_cfg)
        comps = []
        for name, comp in config.components.items():
            comp_cls = COMPONENT_TYPES.get(comp.type)
            if comp.fn is None:
                comp.fn = comp_cls.default_fn
            comps.append(ComponentPlan(name, comp, comp_cls))
        return cls(config, tuple(comps))

    # ------------------------------------------------------------------ the teacher

    @property
    def needs_teacher(self) -> bool:
        """alpha > 0 with at least one component; otherwise the run is plain CE and no teacher is loaded."""
        return self.config.alpha > 0 and len(self.components) > 0

    @property
    def active(self) -> tuple[ComponentPlan, ...]:
        """The components that run (none when no teacher is needed)."""
        return self.components if self.needs_teacher else ()

    def _any(self, attr: str) -> bool:
        return any(getattr(c.cls, attr) for c in self.active)

    @property
    def needs_hidden_states(self) -> bool:
        return self._any("needs_hidden_states")

    @property
    def needs_attentions(self) -> bool:
        """Attention maps are needed: models load with eager attention (sdpa/flash return none)."""
        return self._any("needs_attentions")

    @property
    def needs_distribution(self) -> bool:
        return self._any("needs_distribution")

    @property
    def uses_layer_map(self) -> bool:
        return self._any("uses_layer_map")

    @property
    def teacher_outputs(self) -> frozenset[str]:
        """What the teacher backend must provide."""
        return frozenset().union(*(c.cls_outputs for c in self.active))

    def unserved(self, provides: Iterable[str]) -> list[str]:
        """Teacher outputs this plan needs that a backend providing ``provides`` cannot give."""
        return sorted(self.teacher_outputs - set(provides))

    @property
    def distribution_components(self) -> list[str]:
        """Names of the terms that compare output distributions id by id (need one vocabulary)."""
        return [c.name for c in self.active if c.cls.needs_distribution]

    @property
    def full_logit_components(self) -> list[ComponentPlan]:
        return [c for c in self.active if c.needs_full_logits]

    # ------------------------------------------------------------------ shapes and layers

    @property
    def chunk_size(self) -> int | None:
        """Rows per chunk of the chunked LM response path (None = dense logits)."""
        sizes = [c.config.chunk_size for c in self.active if c.cls.needs_distribution and c.config.chunk_size]
        return min(sizes) if sizes else None

    def layer_pairs(self, layer_map: Any, student: ModelShape, teacher: ModelShape) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs of the run's layer map, in farlab's index space."""
        lm = typed(LayerMapConfig, layer_map)
        return build_layer_map(lm.strategy, student.num_layers, teacher.num_layers, n=lm.n,
                               pairs=None if lm.pairs is None else [list(p) for p in lm.pairs])

    def hidden_teacher_layers(self, layer_map: Any, student: ModelShape, teacher: ModelShape) -> list[int]:
        """Teacher layers whose hidden states the run reads (what a teacher cache must store)."""
        if not self.needs_hidden_states:
            return []
        return sorted({t for _, t in self.layer_pairs(layer_map, student, teacher)})

    # ------------------------------------------------------------------ the FAR factorial

    @property
    def far_letters(self) -> str:
        """The run's F/A/R cell, e.g. ``"FR"``; ``""`` for the CE baseline (no teacher)."""
        present = {c.cls.letter for c in self.active}
        return "".join(letter for letter in FAR_ORDER if letter in present)

    @property
    def far_cell(self) -> str:
        """``"ce"``, ``"f"``, ``"fr"``, ... (the suffix of the ``combined_*`` loss names)."""
        return self.far_letters.lower() or "ce"
