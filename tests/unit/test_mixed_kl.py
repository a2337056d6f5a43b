"""mixed_kl: (1 - lambda) KL(p_t || p_s) + lambda KL(p_s || p_t), x T^2, against hand values and float64 references,
through the divergence registry, the top-k path, the response component and its config."""

import math

import pytest
import torch

from farlab.losses import divergences as D
from farlab.losses.base import DistillBatch, ModelView, TopK
from farlab.losses.objective import ModelShape, build_objective
from farlab.losses.response import ResponseLoss
from farlab.losses.spec import LayerMapConfig, LossConfig, ProjectionConfig, validate_loss_config
from tests.conftest import load_group
from tests.fakes import fake_batch

T = 2.0


def hand_mixed_kl(s: torch.Tensor, t: torch.Tensor, mix: float, temperature: float = T) -> torch.Tensor:
    """The formula written out in float64, with no farlab helper involved."""
    p_s = torch.softmax(s.double() / temperature, -1)
    p_t = torch.softmax(t.double() / temperature, -1)
    forward = (p_t * (p_t / p_s).log()).sum(-1)
    reverse = (p_s * (p_s / p_t).log()).sum(-1)
    return temperature**2 * ((1 - mix) * forward + mix * reverse)


def test_two_class_hand_value():
    # T = 2: teacher (2 ln 3, 0) -> p_t = (3/4, 1/4); student (0, 0) -> p_s = (1/2, 1/2).
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3.0), 0.0]])
    fwd = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    rev = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    want = 4 * (0.75 * fwd + 0.25 * rev)
    assert D.mixed_kl(s, t, mix=0.25, temperature=2.0).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_matches_float64_hand_formula(mix):
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(3, 5, 23, generator=g) * 3, torch.randn(3, 5, 23, generator=g) * 3
    got = D.divergence("mixed_kl", s, t, temperature=T, mix=mix)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got.double(), hand_mixed_kl(s, t, mix), rtol=1e-5, atol=1e-6)
    # float64 inputs stay float64 end to end: agreement to rounding
    exact = D.divergence("mixed_kl", s.double(), t.double(), temperature=T, mix=mix)
    torch.testing.assert_close(exact, hand_mixed_kl(s, t, mix), rtol=1e-12, atol=1e-12)


def test_endpoints_are_kl_and_reverse_kl_and_midpoint_is_symmetric_kl():
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(4, 9, generator=g) * 2, torch.randn(4, 9, generator=g) * 2
    assert torch.equal(D.mixed_kl(s, t, mix=0.0, temperature=T), D.forward_kl(s, t, T))
    assert torch.equal(D.mixed_kl(s, t, mix=1.0, temperature=T), D.reverse_kl(s, t, T))
    torch.testing.assert_close(D.mixed_kl(s, t, mix=0.5, temperature=T), D.symmetric_kl(s, t, T))
    # linear in mix between the endpoints (unlike jsd)
    fwd, rev = D.forward_kl(s, t, T), D.reverse_kl(s, t, T)
    torch.testing.assert_close(D.mixed_kl(s, t, mix=0.3, temperature=T), 0.7 * fwd + 0.3 * rev)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("mix", [0.0, 0.35, 1.0])
def test_topk_at_full_vocab_equals_dense(mix, tail):
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(2, 4, 10, generator=g) * 2, torch.randn(2, 4, 10, generator=g) * 2
    lp, ids = torch.log_softmax(t, -1).sort(-1, descending=True)  # k = V, teacher log-probs at T = 1
    ls, lt = D.topk_logprobs(s, ids, lp, temperature=T, tail=tail)
    sparse = D.divergence_from_logprobs("mixed_kl", ls, lt, temperature=T, mix=mix)
    torch.testing.assert_close(sparse, D.divergence("mixed_kl", s, t, temperature=T, mix=mix), rtol=1e-5, atol=1e-5)
    # the response component takes the same road for a TopK teacher
    loss = ResponseLoss("mixed_kl", temperature=T, mix=mix, topk_tail=tail)
    torch.testing.assert_close(loss.values(s, TopK(ids, lp)), loss.values(s, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mix", [0.0, 0.4, 1.0])
def test_gradcheck_and_gradient_at_the_endpoints(mix):
    g = torch.Generator().manual_seed(14)
    s = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: D.divergence("mixed_kl", a, b, temperature=T, mix=mix)
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-6)
    if mix == 0.0:  # forward KL x T^2: d/ds = T (p_s - p_t), the classic KD gradient
        (grad,) = torch.autograd.grad(fn(s, t).sum(), s)
        p_s, p_t = torch.softmax(s / T, -1), torch.softmax(t / T, -1)
        torch.testing.assert_close(grad, T * (p_s - p_t).detach())


def test_zero_for_identical_and_positive_otherwise():
    x = torch.randn(5, 7) * 4
    torch.testing.assert_close(D.mixed_kl(x, x.clone(), mix=0.3, temperature=T), torch.zeros(5), atol=2e-5, rtol=0)
    assert (D.mixed_kl(x, torch.randn(5, 7) * 4, mix=0.3, temperature=T) > 0).all()


def test_config_plumbs_mix_into_the_response_component():
    cfg = load_group("loss", "response_mixed_kl", LossConfig)
    assert cfg.components.response.fn == "mixed_kl" and cfg.components.response.mix == 0.5  # schema default
    cfg.components.response.mix = 0.2
    student, teacher = ModelShape(2, 4, 2), ModelShape(4, 6, 3)
    obj = build_objective(cfg, LayerMapConfig(), ProjectionConfig(), student, teacher)
    comp = obj.components["response"]
    assert isinstance(comp, ResponseLoss) and comp.mix == 0.2 and comp.fn == "mixed_kl"
    batch = fake_batch(student, teacher)
    mask = batch.response_mask.bool()
    want = hand_mixed_kl(batch.student.logits.detach()[mask], batch.teacher.logits[mask], 0.2).mean()
    got = comp(batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(batch.student.logits.grad).all()


def test_dense_classifier_batch_mean():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    loss = ResponseLoss("mixed_kl", temperature=T, mix=0.6)
    batch = DistillBatch(student=ModelView(logits=s), teacher=ModelView(logits=t), token_mask=torch.ones(4, 1))
    assert loss(batch).item() == pytest.approx(hand_mixed_kl(s, t, 0.6).mean().item(), rel=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_mix_out_of_range_is_refused_naming_the_value(bad):
    cfg = {"name": "bad_mix", "components": {"response": {"type": "response", "fn": "mixed_kl", "mix": bad}}}
    with pytest.raises(ValueError, match=rf"'response': mix \(mixed_kl's lambda\) must be in \[0, 1\], got {bad}"):
        validate_loss_config(cfg)
