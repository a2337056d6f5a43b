"""FeatureLoss: formula, masking, projection ownership, finiteness for every feature fn."""

import pytest
import torch
import torch.nn.functional as F

from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.feature import FEATURE_FNS, FeatureLoss
from farlab.losses.objective import ModelShape
from farlab.losses.projection import build_projection
from tests.fakes import fake_batch

S, TCH = ModelShape(2, 4, 2), ModelShape(4, 6, 3)
PAIRS = [(1, 2), (2, 4)]


def _loss(fn, proj="linear"):
    torch.manual_seed(0)
    return FeatureLoss(fn, PAIRS, [build_projection(proj, S.hidden_size, TCH.hidden_size) for _ in PAIRS])


@pytest.mark.parametrize("fn", ["mse", "cosine"])
def test_matches_direct_formula(fn):
    loss, batch = _loss(fn), fake_batch(S, TCH, lengths=(6, 3))
    m = batch.token_mask.bool()
    expected = 0.0
    for (i, j), proj in zip(PAIRS, loss.projections):
        s, t = proj(batch.student.hidden_states[i])[m], batch.teacher.hidden_states[j][m]
        per = ((s - t) ** 2).mean(-1) if fn == "mse" else 1 - F.cosine_similarity(s, t, dim=-1)
        expected = expected + per.mean() / len(PAIRS)
    torch.testing.assert_close(loss(batch), expected)


def test_padding_does_not_matter_and_projections_train():
    loss, batch = _loss("mse"), fake_batch(S, TCH, lengths=(6, 2))
    base = loss(batch)
    pad = (1 - batch.token_mask)[..., None]
    noisy = DistillBatch(
        ModelView(hidden_states=tuple(h + 1e3 * pad for h in batch.student.hidden_states)),
        ModelView(hidden_states=tuple(h - 1e3 * pad for h in batch.teacher.hidden_states)),
        batch.token_mask,
    )
    torch.testing.assert_close(loss(noisy), base)
    base.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert len(loss.state_dict()) == 2 * len(PAIRS)  # weight + bias per pair


@pytest.mark.parametrize("fn", FEATURE_FNS.names())
def test_finite_with_variable_lengths_and_fully_masked_rows(fn):
    loss = _loss(fn)
    for lengths in [(6, 0), (0, 0)]:
        batch = fake_batch(S, TCH, lengths=lengths)
        value = loss(batch)
        grads = torch.autograd.grad(value, [batch.student.hidden_states[1], *loss.parameters()])
        assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)
        if lengths == (0, 0):
            assert value.item() == 0.0


def test_errors():
    with pytest.raises(ValueError, match="did you mean 'cosine'"):
        FeatureLoss("cosin", PAIRS, [torch.nn.Identity()] * 2)
    with pytest.raises(ValueError, match="one projection per layer pair"):
        FeatureLoss("mse", PAIRS, [torch.nn.Identity()])
    batch = fake_batch(S, TCH)
    with pytest.raises(ValueError, match="out of range"):
        FeatureLoss("mse", [(3, 1)], [build_projection("linear", 4, 6)])(batch)
    with pytest.raises(ValueError, match="hidden_states"):
        _loss("mse")(DistillBatch(ModelView(), ModelView(), batch.token_mask))
