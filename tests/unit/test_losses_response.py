"""ResponseLoss: classifier and LM shapes, chunked == dense, top-k == dense, masking, finiteness."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from farlab.losses.base import DistillBatch, ModelView, TopK
from farlab.losses.divergences import divergence
from farlab.losses.response import RESPONSE_FNS, ResponseLoss, chunked_lm_cross_entropy
from tests.fakes import length_mask

B, T, D, V = 3, 7, 6, 13
FNS = RESPONSE_FNS.names()
TOPK_FNS = [n for n in FNS if RESPONSE_FNS.get(n).supports_topk]


def _setup(seed=0, lengths=(7, 4, 0)):
    torch.manual_seed(seed)
    head, t_head = nn.Linear(D, V), nn.Linear(D, V)
    h = torch.randn(B, T, D, requires_grad=True)
    h_t = torch.randn(B, T, D)
    mask = length_mask(lengths, T)
    mask[:, 0] = 0  # prompt position
    return head, t_head, h, h_t, mask


def _dense_batch(head, t_head, h, h_t, mask):
    return DistillBatch(ModelView(logits=head(h)), ModelView(logits=t_head(h_t)), token_mask=mask, response_mask=mask)


def _grads(loss, head, h):
    return torch.autograd.grad(loss, [h, head.weight, head.bias])


def test_classifier_logits_mean_over_batch():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    batch = DistillBatch(ModelView(logits=s), ModelView(logits=t), token_mask=torch.ones(5, 4))
    loss = ResponseLoss("kl", temperature=2.0)(batch)
    torch.testing.assert_close(loss, divergence("kl", s, t, temperature=2.0).mean())


@pytest.mark.parametrize("teacher_kind", ["logits", "hidden", "detached"])
@pytest.mark.parametrize("fn", FNS)
def test_chunked_equals_dense(fn, teacher_kind):
    head, t_head, h, h_t, mask = _setup()
    dense = ResponseLoss(fn, temperature=2.0, beta=0.3, skew=0.2)(_dense_batch(head, t_head, h, h_t, mask))
    teacher = {"logits": lambda: ModelView(logits=t_head(h_t)),
               "hidden": lambda: ModelView(final_hidden=h_t, lm_head=t_head),
               "detached": lambda: ModelView(logits=t_head(h_t).detach())}[teacher_kind]()
    chunked_batch = DistillBatch(ModelView(final_hidden=h, lm_head=head), teacher, token_mask=mask, response_mask=mask)
    chunked = ResponseLoss(fn, temperature=2.0, beta=0.3, skew=0.2, chunk_size=3)(chunked_batch)
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)
    wrt = [h, head.weight, head.bias, t_head.weight, t_head.bias]
    g_dense = torch.autograd.grad(dense, wrt)
    g_chunk = torch.autograd.grad(chunked, wrt, allow_unused=True)
    for gc, gd in zip(g_chunk[:3], g_dense[:3]):
        torch.testing.assert_close(gc, gd, rtol=1e-5, atol=1e-5)
    if teacher_kind == "detached":  # the loss itself never trains (or detaches) the teacher
        assert g_chunk[3] is None
    else:  # mutual learning: a teacher that requires grad gets the same gradient on both paths
        for gc, gd in zip(g_chunk[3:], g_dense[3:]):
            torch.testing.assert_close(gc, gd, rtol=1e-5, atol=1e-5)


def test_chunked_tied_head_without_bias_and_no_grad():
    torch.manual_seed(1)
    emb = nn.Embedding(V, D)
    head = nn.Linear(D, V, bias=False)
    head.weight = emb.weight  # tied
    h, mask = torch.randn(B, T, D, requires_grad=True), torch.ones(B, T)
    t_logits = torch.randn(B, T, V)
    dense = ResponseLoss("reverse_kl")(DistillBatch(ModelView(logits=head(h)), ModelView(logits=t_logits), mask, mask))
    chunked_batch = DistillBatch(ModelView(final_hidden=h, lm_head=head), ModelView(logits=t_logits), mask, mask)
    chunked = ResponseLoss("reverse_kl", chunk_size=5)(chunked_batch)
    (g_dense,) = torch.autograd.grad(dense, [emb.weight])
    (g_chunk,) = torch.autograd.grad(chunked, [emb.weight])
    torch.testing.assert_close(g_chunk, g_dense, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ResponseLoss("reverse_kl", chunk_size=5)(chunked_batch), dense.detach())


def test_chunked_generic_head_equals_dense():
    """A head that is not a plain nn.Linear (e.g. norm + projection, a LoRA wrapper) uses functional_call."""
    torch.manual_seed(6)
    head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, V))
    t_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, V))
    h, h_t, mask = torch.randn(B, T, D, requires_grad=True), torch.randn(B, T, D), length_mask([7, 5, 1], T)
    dense = ResponseLoss("jsd")(DistillBatch(ModelView(logits=head(h)), ModelView(logits=t_head(h_t)), mask, mask))
    chunked = ResponseLoss("jsd", chunk_size=4)(DistillBatch(
        ModelView(final_hidden=h, lm_head=head), ModelView(final_hidden=h_t, lm_head=t_head), mask, mask))
    torch.testing.assert_close(chunked, dense)
    wrt = [h, *head.parameters(), *t_head.parameters()]
    for gc, gd in zip(torch.autograd.grad(chunked, wrt), torch.autograd.grad(dense, wrt)):
        torch.testing.assert_close(gc, gd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("fn", TOPK_FNS)
def test_topk_full_vocab_equals_dense(fn, tail):
    head, t_head, h, h_t, mask = _setup(2)
    t_logits = t_head(h_t).detach()
    dense = ResponseLoss(fn, temperature=2.0)(_dense_batch(head, t_head, h, h_t, mask))
    lp, ids = torch.log_softmax(t_logits, -1).topk(V, dim=-1)
    teacher = ModelView(topk=TopK(ids, lp))
    sparse_batch = DistillBatch(ModelView(logits=head(h)), teacher, mask, mask)
    sparse = ResponseLoss(fn, temperature=2.0, topk_tail=tail)(sparse_batch)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    chunked = ResponseLoss(fn, temperature=2.0, topk_tail=tail, chunk_size=4)(
        DistillBatch(ModelView(final_hidden=h, lm_head=head), teacher, mask, mask))
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)
    for gc, gd in zip(_grads(chunked, head, h), _grads(dense, head, h)):
        torch.testing.assert_close(gc, gd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_masked_positions_do_not_matter(chunk_size):
    head, t_head, h, h_t, mask = _setup(3)
    loss = ResponseLoss("kl", chunk_size=chunk_size)

    def run(h_in, t_in):
        if chunk_size:
            batch = DistillBatch(ModelView(final_hidden=h_in, lm_head=head),
                                 ModelView(final_hidden=t_in, lm_head=t_head), mask, mask)
        else:
            batch = _dense_batch(head, t_head, h_in, t_in, mask)
        return loss(batch)

    base = run(h, h_t)
    noise = (1 - mask)[..., None] * 1e3 * torch.randn(B, T, D)
    torch.testing.assert_close(run(h + noise, h_t - noise), base)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("fn", FNS)
def test_finite_with_variable_lengths_and_fully_masked_rows(fn, chunk_size):
    head, t_head, h, h_t, mask = _setup(4, lengths=(7, 2, 0))  # third sample fully masked

    def make(m):
        if not chunk_size:
            return _dense_batch(head, t_head, h, h_t, m)
        return DistillBatch(ModelView(final_hidden=h, lm_head=head), ModelView(final_hidden=h_t, lm_head=t_head), m, m)

    for m in (mask, torch.zeros(B, T)):
        loss = ResponseLoss(fn, chunk_size=chunk_size)(make(m))
        grads = _grads(loss, head, h)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
        if m.sum() == 0:
            assert loss.item() == 0.0 and all((g == 0).all() for g in grads)


def test_chunked_lm_cross_entropy_matches_dense():
    head, _, h, _, _ = _setup(5)
    labels = torch.randint(0, V, (B, T))
    labels[0, :3] = -100
    dense = F.cross_entropy(head(h).reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    chunked = chunked_lm_cross_entropy(h, head, labels, chunk_size=4)
    torch.testing.assert_close(chunked, dense)
    for gc, gd in zip(_grads(chunked, head, h), _grads(dense, head, h)):
        torch.testing.assert_close(gc, gd, rtol=1e-5, atol=1e-6)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="did you mean 'reverse_kl'"):
        ResponseLoss("reverse_kll")
    with pytest.raises(ValueError, match="topk_tail"):
        ResponseLoss("kl", topk_tail="keep")
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one shared vocabulary"):
        ResponseLoss("kl")(DistillBatch(ModelView(logits=torch.randn(2, 3, 5)), ModelView(logits=torch.randn(2, 3, 6)),
                                        mask, mask))
    with pytest.raises(ValueError, match="needs teacher logits"):
        ResponseLoss("kl")(DistillBatch(ModelView(logits=torch.randn(2, 3, 5)), ModelView(), mask, mask))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("fn", ["kl", "jsd", "tvd", "cosine"])
def test_chunked_equals_dense_cuda(fn, dtype, tol):
    torch.manual_seed(0)
    head, t_head = nn.Linear(64, 1000).cuda().to(dtype), nn.Linear(64, 1000).cuda().to(dtype).requires_grad_(False)
    h = torch.randn(2, 50, 64, device="cuda", dtype=dtype, requires_grad=True)
    h_t = torch.randn(2, 50, 64, device="cuda", dtype=dtype)
    mask = length_mask([50, 20], 50).cuda()
    dense = ResponseLoss(fn)(DistillBatch(ModelView(logits=head(h)), ModelView(logits=t_head(h_t)), mask, mask))
    chunked = ResponseLoss(fn, chunk_size=16)(
        DistillBatch(ModelView(final_hidden=h, lm_head=head), ModelView(final_hidden=h_t, lm_head=t_head), mask, mask))
    assert chunked.dtype == dense.dtype == torch.float32
    torch.testing.assert_close(chunked, dense, rtol=tol, atol=tol)
    for gc, gd in zip(_grads(chunked, head, h), _grads(dense, head, h)):
        assert gc.dtype == gd.dtype
        torch.testing.assert_close(gc.float(), gd.float(), rtol=tol, atol=tol)
