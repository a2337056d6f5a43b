"""Distillation losses: divergences, response/feature/attention components, layer maps, projections,
schedules and the objective that combines them. See ``objective.build_objective`` for the entry point."""

from farlab.losses.attention import ATTENTION_FNS, AttentionKL
from farlab.losses.base import COMPONENT_TYPES, BuildContext, DistillBatch, LossComponent, ModelShape, ModelView, TopK
from farlab.losses.divergences import DIVERGENCES, divergence, masked_mean, topk_logprobs
from farlab.losses.feature import FEATURE_FNS, FeatureLoss
from farlab.losses.layer_map import LAYER_MAPS, build_layer_map
from farlab.losses.objective import DistillationObjective, build_objective
from farlab.losses.plan import LossPlan
from farlab.losses.projection import PROJECTIONS, build_projection
from farlab.losses.response import RESPONSE_FNS, ResponseLoss, chunked_lm_cross_entropy
from farlab.losses.spec import (
    ComponentConfig,
    LayerMapConfig,
    LossConfig,
    PhaseConfig,
    ProjectionConfig,
    ScheduleConfig,
    validate_layer_map_config,
    validate_loss_config,
    validate_projection_config,
)
from farlab.losses.staged import Schedule

__all__ = [
    "ATTENTION_FNS", "AttentionKL", "BuildContext", "COMPONENT_TYPES", "LossPlan", "ComponentConfig", "DIVERGENCES", "DistillBatch", "DistillationObjective",
    "FEATURE_FNS", "FeatureLoss", "LAYER_MAPS", "LayerMapConfig", "LossComponent", "LossConfig", "ModelShape",
    "ModelView", "PROJECTIONS", "PhaseConfig", "ProjectionConfig", "RESPONSE_FNS", "ResponseLoss", "Schedule",
    "ScheduleConfig", "TopK", "build_layer_map", "build_objective", "build_projection",
    "chunked_lm_cross_entropy", "divergence", "masked_mean", "topk_logprobs", "validate_layer_map_config",
    "validate_loss_config", "validate_projection_config",
]
