"""Divergence math vs independent references (numpy/scipy float64, torch.distributions, TRL)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr

from farlab.losses import divergences as D
from farlab.losses.divergences import DIVERGENCES, divergence, masked_mean, topk_logprobs

T = 2.0
BETA, SKEW, MIX = 0.3, 0.2, 0.3


def _p(x: np.ndarray, t: float = T) -> np.ndarray:
    return np.exp(np_log_softmax(x / t, axis=-1))


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return rel_entr(p, q).sum(-1)


# Independent float64 references: (student logits, teacher logits) -> per-position values.
REFERENCES = {
    "kl": lambda s, t: T**2 * _kl(_p(t), _p(s)),
    "reverse_kl": lambda s, t: T**2 * _kl(_p(s), _p(t)),
    "jsd": lambda s, t: T**2 * (
        BETA * _kl(_p(t), BETA * _p(t) + (1 - BETA) * _p(s))
        + (1 - BETA) * _kl(_p(s), BETA * _p(t) + (1 - BETA) * _p(s))
    ),
    "symmetric_kl": lambda s, t: T**2 * 0.5 * (_kl(_p(t), _p(s)) + _kl(_p(s), _p(t))),
    "mixed_kl": lambda s, t: T**2 * ((1 - MIX) * _kl(_p(t), _p(s)) + MIX * _kl(_p(s), _p(t))),
    "tvd": lambda s, t: 0.5 * np.abs(_p(t) - _p(s)).sum(-1),
    "skew_kl": lambda s, t: T**2 * _kl(_p(t), SKEW * _p(t) + (1 - SKEW) * _p(s)),
    "skew_reverse_kl": lambda s, t: T**2 * _kl(_p(s), SKEW * _p(s) + (1 - SKEW) * _p(t)),
    "ce": lambda s, t: -T**2 * (_p(t) * np.log(_p(s))).sum(-1),
    "mse": lambda s, t: ((s - t) ** 2).mean(-1),
    "cosine": lambda s, t: 1 - (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1)),
}
KL_FAMILY = ["kl", "reverse_kl", "jsd", "symmetric_kl", "mixed_kl", "skew_kl", "skew_reverse_kl"]


def _div(name, s, t, **kw):
    return divergence(name, s, t, temperature=kw.pop("temperature", T), beta=kw.pop("beta", BETA),
                      skew=kw.pop("skew", SKEW), mix=kw.pop("mix", MIX))


def test_every_registered_divergence_has_a_reference():
    assert set(REFERENCES) == set(DIVERGENCES.names())


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_float64_reference(name):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 17, generator=g) * 3, torch.randn(3, 4, 17, generator=g) * 3
    got = _div(name, s, t)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), REFERENCES[name](s.double().numpy(), t.double().numpy()),
                               rtol=1e-4, atol=1e-5)


def test_forward_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=t / T), torch.distributions.Categorical(logits=s / T)
    )
    torch.testing.assert_close(D.forward_kl(s, t, temperature=T), T**2 * ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(D.reverse_kl(t, s, temperature=T), T**2 * ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_extreme_logits_are_finite(name):
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(4, 33, generator=g).sign() * 1e4).requires_grad_()
    t = torch.randn(4, 33, generator=g) * 1e4
    t[0, :5] = float("-inf")  # masked vocabulary entries must not poison the math
    for temp in (0.5, 1.0, 4.0):
        v = _div(name, s, t, temperature=temp)
        (g_s,) = torch.autograd.grad(v.sum(), s)
        assert torch.isfinite(v).all() and torch.isfinite(g_s).all(), (name, temp)
        if name in KL_FAMILY or name == "tvd":
            assert (v >= -1e-3).all()


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "symmetric_kl", "mixed_kl", "tvd", "skew_kl",
                                  "skew_reverse_kl", "mse", "cosine"])
def test_identical_distributions_give_zero(name):
    x = torch.randn(6, 13) * 5
    torch.testing.assert_close(_div(name, x, x.clone()), torch.zeros(6), atol=2e-5, rtol=0)


def test_jsd_endpoints_and_symmetric_kl():
    s, t = torch.randn(4, 10) * 2, torch.randn(4, 10) * 2
    fwd, rev = D.forward_kl(s, t, T), D.reverse_kl(s, t, T)
    torch.testing.assert_close(D.generalized_jsd(s, t, beta=0.0, temperature=T), fwd)
    torch.testing.assert_close(D.generalized_jsd(s, t, beta=1.0, temperature=T), rev)
    torch.testing.assert_close(D.symmetric_kl(s, t, T), 0.5 * (fwd + rev))
    # JSD at beta = 0.5 is symmetric in its arguments; CE - KL is the teacher entropy.
    torch.testing.assert_close(D.generalized_jsd(s, t, 0.5, T), D.generalized_jsd(t, s, 0.5, T))
    p_t = torch.softmax(t / T, -1)
    entropy = -(p_t * torch.log(p_t)).sum(-1)
    torch.testing.assert_close(D.soft_cross_entropy(s, t, T) - fwd, T**2 * entropy, rtol=1e-5, atol=1e-5)
    # skew 0 is plain KL.
    torch.testing.assert_close(D.skew_forward_kl(s, t, skew=0.0, temperature=T), fwd)
    torch.testing.assert_close(D.skew_reverse_kl(s, t, skew=0.0, temperature=T), rev)


def test_tvd_is_bounded():
    s, t = torch.randn(50, 7) * 20, torch.randn(50, 7) * 20
    v = D.total_variation(s, t, temperature=0.3)
    assert (v >= 0).all() and (v <= 1 + 1e-6).all() and v.max() > 0.9


def test_temperature_scaling_hand_computed_with_padding():
    # Position 0: teacher logits (2 ln 3, 0) / T=2 -> p_t = (3/4, 1/4); student (0, 0) -> (1/2, 1/2).
    # Position 1 is padding with absurd logits; it must not count.
    s = torch.tensor([[0.0, 0.0], [1e4, -1e4]])
    t = torch.tensor([[2 * math.log(3.0), 0.0], [-1e4, 1e4]])
    mask = torch.tensor([1.0, 0.0])
    kl_t2 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert masked_mean(D.forward_kl(s, t, temperature=2.0), mask).item() == pytest.approx(4 * kl_t2, rel=1e-6)
    # At T = 1 the same student/teacher: p_t = (9/10, 1/10), no scaling.
    kl_t1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert masked_mean(D.forward_kl(s, t, temperature=1.0), mask).item() == pytest.approx(kl_t1, rel=1e-6)
    # TVD is not scaled: |3/4 - 1/2| = 1/4.
    assert masked_mean(D.total_variation(s, t, temperature=2.0), mask).item() == pytest.approx(0.25, rel=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradcheck_double(name):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _div(name, a, b), (s, t), eps=1e-6, atol=1e-5)


def test_masked_mean_all_masked_is_zero_with_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    values = x + torch.full((3, 4), float("nan"))  # even non-finite values at masked positions
    out = masked_mean(values, torch.zeros(3, 4))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(x.grad).all() and (x.grad == 0).all()
    assert masked_mean(x, None).item() == pytest.approx(x.mean().item())


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_jsd_matches_trl_gkd(beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :2] = -100
    ref = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=T)
    ours = masked_mean(D.generalized_jsd(s, t, beta=beta, temperature=T), labels != -100)
    torch.testing.assert_close(ours, T**2 * ref, rtol=1e-5, atol=1e-6)


TOPK_FNS = [n for n in DIVERGENCES.names() if DIVERGENCES.get(n).supports_topk]


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("name", TOPK_FNS)
def test_topk_with_full_vocab_equals_dense(name, tail):
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 4, 12, generator=g) * 2, torch.randn(3, 4, 12, generator=g) * 2
    lp, ids = torch.log_softmax(t, -1).sort(-1, descending=True)
    ls, lt = topk_logprobs(s, ids, lp, temperature=T, tail=tail)
    sparse = D.divergence_from_logprobs(name, ls, lt, temperature=T, beta=BETA, skew=SKEW, mix=MIX)
    torch.testing.assert_close(sparse, _div(name, s, t), rtol=1e-5, atol=1e-5)


def test_topk_bucket_and_renormalize_against_hand_formula():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    p_s, p_t = torch.softmax(s.double(), -1), torch.softmax(t.double(), -1)
    lp, ids = torch.log_softmax(t, -1).topk(3, dim=-1)
    # bucket at T = 1: KL between the (k + 1)-outcome coarse-grainings.
    coarse = lambda p: torch.cat([p.gather(-1, ids), 1 - p.gather(-1, ids).sum(-1, keepdim=True)], -1)
    ref = (coarse(p_t) * (coarse(p_t) / coarse(p_s)).log()).sum(-1)
    ls, lt = topk_logprobs(s, ids, lp, temperature=1.0, tail="bucket")
    torch.testing.assert_close(D.divergence_from_logprobs("kl", ls, lt), ref.float(), rtol=1e-4, atol=1e-5)
    # renormalize: KL between the distributions restricted to the top-k and renormalised.
    norm = lambda p: p.gather(-1, ids) / p.gather(-1, ids).sum(-1, keepdim=True)
    ref = (norm(p_t) * (norm(p_t) / norm(p_s)).log()).sum(-1)
    ls, lt = topk_logprobs(s, ids, lp, temperature=1.0, tail="renormalize")
    torch.testing.assert_close(D.divergence_from_logprobs("kl", ls, lt), ref.float(), rtol=1e-4, atol=1e-5)


def test_topk_refuses_logit_space_fns_and_bad_tail():
    s, ids, lp = torch.randn(2, 5), torch.tensor([[0, 1], [2, 3]]), torch.full((2, 2), -1.0)
    ls, lt = topk_logprobs(s, ids, lp)
    with pytest.raises(ValueError, match="needs the teacher's full logits"):
        D.divergence_from_logprobs("mse", ls, lt)
    with pytest.raises(ValueError, match="valid: renormalize, bucket"):
        topk_logprobs(s, ids, lp, tail="drop")


def test_unknown_fn_and_shape_mismatch():
    with pytest.raises(ValueError, match="did you mean 'kl'"):
        divergence("kll", torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="one shared vocabulary"):
        divergence("kl", torch.randn(2, 3), torch.randn(2, 4))


def test_half_precision_inputs_compute_in_float32():
    s, t = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    v = divergence("kl", s, t, temperature=T)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, divergence("kl", s.float(), t.float(), temperature=T))
