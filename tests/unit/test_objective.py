"""DistillationObjective and the conf/loss YAMLs: totals by hand, parts keys, config validation."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from farlab.losses.objective import DistillationObjective, ModelShape, build_objective
from farlab.losses.spec import (
    LayerMapConfig,
    LossConfig,
    ProjectionConfig,
    validate_layer_map_config,
    validate_loss_config,
    validate_projection_config,
)
from tests.conftest import load_group
from tests.fakes import fake_batch

CONF = Path(__file__).resolve().parents[2] / "conf"
STUDENT, TEACHER = ModelShape(2, 4, 2), ModelShape(4, 6, 3)
NAMES = {"r": "response", "f": "feature", "a": "attention"}


def load(group: str, name: str, schema):
    return load_group(group, name, schema)


def build(name: str, layer_map: str = "uniform", projection: str = "linear"):
    return build_objective(load("loss", name, LossConfig), load("layer_map", layer_map, LayerMapConfig),
                           load("projection", projection, ProjectionConfig), STUDENT, TEACHER)


def test_every_group_yaml_validates_and_matches_its_file_name():
    for path in sorted((CONF / "loss").glob("*.yaml")):
        cfg = load("loss", path.stem, LossConfig)
        validate_loss_config(cfg)
        assert cfg.name == path.stem and cfg.temperature == (1.0 if path.stem == "gkd" else 2.0)  # GKD: untempered JSD
    for path in (CONF / "layer_map").glob("*.yaml"):
        validate_layer_map_config(load("layer_map", path.stem, LayerMapConfig))
    for path in (CONF / "projection").glob("*.yaml"):
        validate_projection_config(load("projection", path.stem, ProjectionConfig))
    expected = {"ce", "combined_ce", "attention_kl", "feature_mse", "feature_cosine", "staged_r_then_f",
                "staged_ramp_features", "gkd"} | {f"response_{f}" for f in
                                           ["kl", "reverse_kl", "mse", "cosine", "ce", "jsd", "symmetric_kl", "mixed_kl", "tvd"]}
    expected |= {f"combined_{k}" for k in ["f", "a", "r", "fr", "fa", "ar", "far"]}
    assert {p.stem for p in (CONF / "loss").glob("*.yaml")} == expected


@pytest.mark.parametrize("combo", ["f", "a", "r", "fr", "fa", "ar", "far", "ce"])
def test_combined_parts_keys_and_backward(combo):
    obj = build(f"combined_{combo}")
    comps = [] if combo == "ce" else [NAMES[c] for c in combo]
    assert obj.needs_teacher == bool(comps)
    assert obj.needs_hidden_states == ("feature" in comps)
    assert obj.needs_attentions == ("attention" in comps)
    batch = fake_batch(STUDENT, TEACHER)
    ce = torch.tensor(2.0, requires_grad=True)
    total, parts = obj(batch, ce, step=0, max_steps=10)
    logged = {"ce"} | {f"{c}/{k}" for c in comps for k in ("raw", "weight", "weighted")}
    assert set(parts) == logged | ({"response/teacher_entropy"} if "response" in comps else set())
    assert all(isinstance(v, float) for v in parts.values())
    total.backward()
    assert torch.isfinite(total) and ce.grad.item() == 1.0
    if "feature" in comps:
        assert all(p.grad is not None for p in obj.parameters())


def test_total_equals_hand_sum():
    obj = build("combined_far")
    obj.alpha, obj.ce_weight = 0.7, 0.9
    obj.base_weights = {"response": 2.0, "feature": 0.5, "attention": 3.0}
    batch = fake_batch(STUDENT, TEACHER, seed=3)
    ce = torch.tensor(1.25)
    total, parts = obj(batch, ce)
    raw = {n: obj.components[n](batch).item() for n in NAMES.values()}
    by_hand = 0.9 * 1.25 + 0.7 * (2.0 * raw["response"] + 0.5 * raw["feature"] + 3.0 * raw["attention"])
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    for n, w in obj.base_weights.items():
        assert parts[f"{n}/raw"] == pytest.approx(raw[n], rel=1e-6)
        assert parts[f"{n}/weight"] == w
        assert parts[f"{n}/weighted"] == pytest.approx(0.7 * w * raw[n], rel=1e-6)


def test_balance_rescales_to_ce_with_detached_factor():
    cfg = load("loss", "combined_fr", LossConfig)
    cfg.balance = True
    obj = build_objective(cfg, LayerMapConfig(), ProjectionConfig(), STUDENT, TEACHER)
    batch = fake_batch(STUDENT, TEACHER)
    total, parts = obj(batch, torch.tensor(3.0))
    for n in ("response", "feature"):
        assert parts[f"{n}/weighted"] == pytest.approx(0.5 * 3.0, rel=1e-5)
        assert parts[f"{n}/scale"] == pytest.approx(3.0 / parts[f"{n}/raw"], rel=1e-5)
    # Detached factor: d total / d student logits equals alpha * scale * d raw / d logits.
    (g_total,) = torch.autograd.grad(total, batch.student.logits)
    (g_raw,) = torch.autograd.grad(obj.components["response"](batch), batch.student.logits)
    torch.testing.assert_close(g_total, 0.5 * parts["response/scale"] * g_raw, rtol=1e-4, atol=1e-7)


def test_ce_only_needs_no_teacher_and_no_shapes():
    for name in ("ce", "combined_ce"):
        obj = build_objective(load("loss", name, LossConfig), None, None, STUDENT, None)
        assert not obj.needs_teacher and len(list(obj.parameters())) == 0
        total, parts = obj(None, torch.tensor(1.5))
        assert total.item() == 1.5 and parts == {"ce": 1.5}
        assert obj(None, None)[0].item() == 0.0  # no labels: pure distillation has no CE term
    cfg = load("loss", "combined_r", LossConfig)
    cfg.alpha = 0.0
    assert not build_objective(cfg, None, None, STUDENT, None).needs_teacher
    with pytest.raises(ValueError, match="needs both student and teacher"):
        build_objective(load("loss", "combined_r", LossConfig), None, None, STUDENT, None)


def test_projection_and_layer_map_choices_flow_through():
    obj = build("combined_fa", layer_map="last_n", projection="mlp")
    assert obj.components["feature"].pairs == [(1, 3), (2, 4)]
    assert obj.components["attention"].pairs == [(1, 3), (2, 4)]
    assert len(obj.components["feature"].projections) == 2
    assert any("norm" in k for k in obj.state_dict())
    with pytest.raises(ValueError, match="student hidden size is 4 and teacher hidden size is 6"):
        build("combined_f", projection="identity")
    custom = build("combined_fa", layer_map="custom")
    assert custom.components["feature"].pairs == [(1, 2), (2, 4)]


def _cfg(**kw):
    base = {"name": "bad", "components": {"response": {"type": "response", "fn": "kl"}}}
    base.update(kw)
    return OmegaConf.merge(OmegaConf.structured(LossConfig), base)


@pytest.mark.parametrize("cfg,needles", [
    (_cfg(components={"response": {"type": "response", "fn": "kll"}}),
     ["unknown loss fn 'kll' for component 'response'", "valid: ce, cosine", "did you mean 'kl'?"]),
    (_cfg(alpha=-0.1), ["alpha must be >= 0, got -0.1"]),
    (_cfg(temperature=0.0), ["temperature must be > 0, got 0.0"]),
    (_cfg(components={"x": {"type": "features", "fn": "mse"}}),
     ["unknown component type 'features'", "valid: attention, feature, response", "did you mean 'feature'?"]),
    (_cfg(components={"feature": {"type": "feature", "fn": "kl"}}), ["unknown loss fn 'kl'", "valid: cosine, mse"]),
    (_cfg(schedule={"unit": "fraction", "phases": [{"until": 0.5, "weights": {"response": 1.0}},
                                                     {"until": 0.5, "weights": {"response": 0.0}}]}),
     ["strictly increasing", "[0.5, 0.5]"]),
    (_cfg(schedule={"unit": "epoch", "phases": [{"until": 1.0}]}),
     ["unknown schedule unit 'epoch'", "valid: fraction, step"]),
    (_cfg(schedule={"phases": [{"until": 1.0, "weights": {"respons": 1.0}}]}),
     ["unknown component 'respons'", "did you mean 'response'?"]),
    (_cfg(components={"response": {"type": "response", "fn": "jsd", "beta": 1.5}}),
     ["beta must be in [0, 1], got 1.5"]),
    (_cfg(components={"response": {"type": "response", "fn": "kl", "topk_tail": "drop"}}),
     ["unknown topk_tail 'drop'", "valid: bucket, renormalize"]),
    (_cfg(components={"response": {"type": "response", "fn": "kl", "chunk_size": 0, "weight": -1.0}}),
     ["chunk_size must be a positive", "weight must be >= 0"]),
])
def test_validate_loss_config_errors(cfg, needles):
    with pytest.raises(ValueError) as e:
        validate_loss_config(cfg)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_validate_layer_map_and_projection_errors():
    with pytest.raises(ValueError, match="did you mean 'last_n'"):
        validate_layer_map_config(LayerMapConfig(strategy="lastn"))
    with pytest.raises(ValueError, match="needs n >= 1"):
        validate_layer_map_config(LayerMapConfig(strategy="last_n"))
    with pytest.raises(ValueError, match="needs pairs like"):
        validate_layer_map_config(LayerMapConfig(strategy="custom", pairs=[[1, 2, 3]]))
    with pytest.raises(ValueError, match="did you mean 'mlp'"):
        validate_projection_config(ProjectionConfig(type="mpl"))
    with pytest.raises(ValueError, match="does not fit student depth 2 and teacher depth 4"):
        build_objective(load("loss", "combined_f", LossConfig), LayerMapConfig("last_n", n=3), ProjectionConfig(),
                        STUDENT, TEACHER)


def test_model_shape_from_hf_config():
    from transformers import BertConfig

    cfg = BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4)
    assert ModelShape.from_hf_config(cfg) == ModelShape(3, 32, 4)
    assert isinstance(build("combined_r"), DistillationObjective)
