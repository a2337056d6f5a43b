"""Projections: shapes, dtype handling, state_dict round trip, identity width check."""

import io

import pytest
import torch

from farlab.losses.projection import PROJECTIONS, build_projection


@pytest.mark.parametrize("kind,kw", [("linear", {}), ("linear", {"layernorm": True}), ("mlp", {}),
                                     ("mlp", {"layernorm": True, "hidden_size": 5})])
def test_shapes_and_state_dict_roundtrip(kind, kw):
    torch.manual_seed(0)
    proj = build_projection(kind, 4, 6, **kw)
    x = torch.randn(2, 3, 4)
    assert proj(x).shape == (2, 3, 6)
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    fresh = build_projection(kind, 4, 6, **kw)
    assert not torch.equal(fresh(x), proj(x))
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh(x), proj(x))


def test_identity_passes_through_and_refuses_different_widths():
    x = torch.randn(2, 3, 4)
    assert torch.equal(build_projection("identity", 4, 4)(x), x)
    assert len(build_projection("identity", 4, 4).state_dict()) == 0
    with pytest.raises(ValueError, match="student hidden size is 4 and teacher hidden size is 6"):
        build_projection("identity", 4, 6)


def test_half_input_into_float32_projection():
    proj = build_projection("mlp", 4, 6)
    assert proj(torch.randn(2, 4).bfloat16()).dtype == torch.float32


def test_registry_and_unknown_type():
    assert PROJECTIONS.names() == ["identity", "linear", "mlp"]
    with pytest.raises(ValueError, match="did you mean 'linear'"):
        build_projection("lineer", 4, 6)
