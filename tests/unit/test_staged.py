"""Staged schedules: switch points, linear ramps, resume purity, zero-weight components."""

from pathlib import Path

import pytest
import torch

from farlab.losses.objective import ModelShape, build_objective
from farlab.losses.spec import LayerMapConfig, LossConfig, ProjectionConfig
from farlab.losses.staged import Phase, Schedule
from tests.conftest import load_group
from tests.fakes import fake_batch

CONF = Path(__file__).resolve().parents[2] / "conf"
STUDENT, TEACHER = ModelShape(2, 4, 2), ModelShape(4, 6, 3)


def build(name: str):
    cfg = load_group("loss", name, LossConfig)
    return build_objective(cfg, LayerMapConfig(), ProjectionConfig(), STUDENT, TEACHER)


def test_step_unit_switches_exactly_at_until():
    s = Schedule([Phase(100, {"response": 1.0}), Phase(200, {"feature": 2.0})], ["response", "feature"], unit="step")
    assert s.phase(99, 0) == 0 and s.weights(99, 0) == {"response": 1.0, "feature": 0.0}
    assert s.phase(100, 0) == 1 and s.weights(100, 0) == {"response": 0.0, "feature": 2.0}
    assert s.phase(10_000, 0) == 1  # after the last boundary the last phase holds


def test_staged_r_then_f_by_fraction():
    obj = build("staged_r_then_f")
    max_steps = 1000
    assert obj.weights(0, max_steps) == {"response": 1.0, "feature": 0.0}
    assert obj.weights(299, max_steps) == {"response": 1.0, "feature": 0.0}
    assert obj.weights(300, max_steps) == {"response": 0.0, "feature": 1.0}
    assert obj.weights(600, max_steps) == {"response": 1.0, "feature": 1.0}
    assert [obj.phase(s, max_steps) for s in (0, 299, 300, 599, 600, 1000)] == [0, 0, 1, 1, 2, 2]


def test_linear_ramp():
    obj = build("staged_ramp_features")
    w = [obj.weights(s, 100)["feature"] for s in (0, 10, 25, 50, 80, 100)]
    assert w == pytest.approx([0.0, 0.2, 0.5, 1.0, 1.0, 1.0])
    assert all(obj.weights(s, 100)["response"] == 1.0 for s in range(0, 101, 7))


def test_weights_are_a_pure_function_of_step_so_resume_matches():
    uninterrupted = build("staged_r_then_f")
    seen = [(uninterrupted.weights(s, 50), uninterrupted.phase(s, 50)) for s in range(50)]
    resumed = build("staged_r_then_f")  # fresh process after a checkpoint at step 23
    resumed.load_state_dict(uninterrupted.state_dict())
    assert [(resumed.weights(s, 50), resumed.phase(s, 50)) for s in range(23, 50)] == seen[23:]


def test_zero_weight_component_is_skipped_but_keeps_params_in_graph():
    obj = build("staged_r_then_f")
    batch = fake_batch(STUDENT, TEACHER)
    total, parts = obj(batch, torch.tensor(1.0), step=0, max_steps=10)
    assert parts["feature/weight"] == 0.0 and parts["feature/raw"] == 0.0 and parts["feature/weighted"] == 0.0
    assert parts["response/weighted"] == pytest.approx(0.5 * parts["response/raw"])
    total.backward()
    assert all(p.grad is not None and (p.grad == 0).all() for p in obj.components["feature"].parameters())
    _, parts = obj(batch, torch.tensor(1.0), step=4, max_steps=10)
    assert parts["response/weight"] == 0.0 and parts["feature/raw"] > 0


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="strictly"):
        Schedule([Phase(0.5), Phase(0.4)], ["response"])
    with pytest.raises(ValueError, match="valid: linear, step"):
        Schedule([Phase(0.5)], ["response"], ramp="cosine")
    with pytest.raises(ValueError, match="max_steps > 0"):
        Schedule([Phase(0.5)], ["response"]).weights(3, 0)
