"""AttentionKL: per-head and head-averaged KL vs a direct formula, masking, NaN rows, pair checks."""

import numpy as np
import pytest
import torch

from farlab.losses.attention import ATTENTION_FNS, AttentionKL
from farlab.losses.base import DistillBatch, ModelView
from farlab.losses.objective import ModelShape
from tests.fakes import fake_batch


def _direct(p_s: np.ndarray, p_t: np.ndarray, mask: np.ndarray) -> float:
    """Mean over (batch, head, real query) of sum_k p_t log(p_t / p_s), in float64."""
    vals = []
    for b in range(p_s.shape[0]):
        for h in range(p_s.shape[1]):
            for q in range(p_s.shape[2]):
                if mask[b, q]:
                    pt, ps = p_t[b, h, q], p_s[b, h, q]
                    nz = pt > 0
                    vals.append(float((pt[nz] * np.log(pt[nz] / ps[nz])).sum()))
    return float(np.mean(vals))


@pytest.mark.parametrize("heads", [(2, 2), (2, 3)])
def test_matches_direct_formula(heads):
    s_shape, t_shape = ModelShape(2, 4, heads[0]), ModelShape(4, 6, heads[1])
    batch = fake_batch(s_shape, t_shape, lengths=(6, 4))
    pairs = [(1, 2), (2, 4)]
    got = AttentionKL(pairs)(batch)
    mask = batch.token_mask.bool().numpy()
    expected = 0.0
    for i, j in pairs:
        p_s = batch.student.attentions[i - 1].detach().double().numpy()
        p_t = batch.teacher.attentions[j - 1].double().numpy()
        if heads[0] != heads[1]:  # head-averaged
            p_s, p_t = p_s.mean(1, keepdims=True), p_t.mean(1, keepdims=True)
        expected += _direct(p_s, p_t, mask) / len(pairs)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_padded_queries_excluded():
    shape = ModelShape(2, 4, 2)
    batch = fake_batch(shape, shape, lengths=(6, 3))
    loss = AttentionKL([(1, 1), (2, 2)])
    base = loss(batch)
    rows = (1 - batch.token_mask)[:, None, :, None]
    junk = lambda a: tuple(x.detach() * (1 - rows) + rows * torch.rand_like(x) for x in a)
    noisy = DistillBatch(ModelView(attentions=junk(batch.student.attentions)),
                         ModelView(attentions=junk(batch.teacher.attentions)), batch.token_mask)
    torch.testing.assert_close(loss(noisy), base)


@pytest.mark.parametrize("fn", ATTENTION_FNS.names())
@pytest.mark.parametrize("lengths", [(6, 0), (0, 0), (1, 5)])
def test_finite_for_fully_masked_rows(fn, lengths):
    s_shape, t_shape = ModelShape(2, 4, 2), ModelShape(2, 4, 4)
    batch = fake_batch(s_shape, t_shape, lengths=lengths)  # rows with no valid key are NaN in the input
    value = AttentionKL([(1, 1), (2, 2)], fn=fn)(batch)
    grads = torch.autograd.grad(value, list(batch.student.attentions))
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)


def test_pairs_must_be_blocks_and_need_attentions():
    with pytest.raises(ValueError, match="0 is the embeddings"):
        AttentionKL([(0, 1)])
    batch = fake_batch(ModelShape(2, 4, 2), ModelShape(2, 4, 2))
    with pytest.raises(ValueError, match="out of range"):
        AttentionKL([(3, 1)])(batch)
    with pytest.raises(ValueError, match="attn_implementation"):
        AttentionKL([(1, 1)])(DistillBatch(ModelView(), ModelView(), batch.token_mask))
