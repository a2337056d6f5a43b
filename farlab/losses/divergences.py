"""All distillation divergence math, in one place.

Every function here is pure and returns *per-position* values (the input's leading dims), so callers
reduce with :func:`masked_mean` and a mask. The dense, chunked and top-k response paths, GKD and the
workbench all call these functions; nothing else in farlab re-derives a KL.

Conventions
-----------
* ``p_t`` is the teacher distribution, ``p_s`` the student's; both are ``softmax(logits / T)``.
* Math runs in float32 (half inputs are upcast; float64 stays float64 so gradcheck works), through
  ``log_softmax``/``logaddexp`` only. Logits are floored at ``NEG_LOGIT`` (finite), so an input ``-inf``
  (masked vocabulary rows) can never create ``0 * inf`` -> NaN. No ``-inf`` sentinel is used anywhere.
* Temperature: both sides are softened by ``T``. The KL family (``kl``, ``reverse_kl``, ``jsd``,
  ``symmetric_kl``, ``mixed_kl``, ``skew_kl``, ``skew_reverse_kl``, ``ce``) is multiplied by ``T**2`` so gradient size
  does not shrink with ``T`` (Hinton et al. 2015). ``tvd`` is *not* scaled (it is a bounded distance in
  [0, 1]). ``mse`` and ``cosine`` act on the raw logits and ignore ``T``.
* ``jsd`` follows TRL's ``GKDTrainer.generalized_jsd_loss`` exactly: ``beta == 0`` is forward KL
  ``KL(p_t || p_s)``, ``beta == 1`` is reverse KL ``KL(p_s || p_t)``, otherwise with the mixture
  ``m = beta * p_t + (1 - beta) * p_s`` it is ``beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``.
  (As in TRL the endpoints are special cases: the mixture formula itself tends to 0 at beta -> 0/1.)
  TRL does not multiply by ``T**2``; farlab does, so ``farlab = T**2 * trl``.
* ``mixed_kl`` is the linear blend ``(1 - mix) KL(p_t || p_s) + mix KL(p_s || p_t)`` (the "lambda-balanced"
  forward/reverse KL); ``mix`` 0 is ``kl``, 1 is ``reverse_kl``, 0.5 is ``symmetric_kl``. Unlike ``jsd`` it
  compares the two distributions directly, with no mixture distribution in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from farlab.registry import Registry

NEG_LOGIT = -1e9  # finite floor for logits: exp() underflows to exactly 0, differences stay finite
LOG_FLOOR = -100.0  # floor for log-masses of top-k tail buckets (exp(-100) ~ 4e-44, i.e. zero)
TAIL_EPS = 1e-5  # a teacher tail mass below this is treated as empty (rounding noise of a full top-k)
TOPK_TAILS = ("renormalize", "bucket")


# --------------------------------------------------------------------------- helpers


def upcast(x: Tensor) -> Tensor:
    """Half precision -> float32; float32/float64 unchanged (float64 keeps gradcheck exact)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _Floor(torch.autograd.Function):
    """``clamp_min(x, NEG_LOGIT)`` with a straight-through gradient.

    A plain ``clamp_min`` would keep its ``[N, V]`` input alive for backward (a full extra logits copy
    in the dense path); passing the gradient straight through saves nothing. Only entries below -1e9
    (i.e. masked, ``-inf``) are affected, and their probability is exactly 0 either way.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clamp_min(NEG_LOGIT)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def floor_logits(logits: Tensor) -> Tensor:
    """Upcast and floor logits at the finite ``NEG_LOGIT`` (so ``-inf`` inputs stay harmless)."""
    return _Floor.apply(upcast(logits))


def soften(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / T)`` in float32, with logits floored at a finite ``NEG_LOGIT``."""
    z = upcast(logits)
    if temperature != 1.0:
        z = z / temperature
    return torch.log_softmax(_Floor.apply(z), dim=-1)


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is true; ``mask=None`` means all positions.

    An all-zero mask gives exactly 0 that is still attached to the graph (backward yields zero
    gradients, never NaN). Masked positions are selected away with ``where``, so even non-finite
    values there cannot leak into the result. ``mask`` must broadcast to ``values``.
    """
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    keep = mask.to(torch.bool).expand_as(values)
    kept = torch.where(keep, values, values.new_zeros(()))
    return kept.sum() / keep.sum().clamp_min(1).to(values.dtype)


def kl_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p || q) = sum p (log p - log q)`` over the last dim, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def log_mixture(logp: Tensor, logq: Tensor, a: float) -> Tensor:
    """``log(a * p + (1 - a) * q)``, stable, with the endpoints returned exactly."""
    if a <= 0.0:
        return logq
    if a >= 1.0:
        return logp
    return torch.logaddexp(logp + math.log(a), logq + math.log1p(-a))


def kl_probs(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """``KL(p || q)`` over the last dim for inputs that are already probabilities (attention maps).

    Zero-probability entries of ``p`` contribute exactly 0; ``q`` is floored at ``eps`` so the result
    stays finite where ``q`` has no mass.
    """
    p, q = upcast(p), upcast(q)
    return (p * (torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps)))).sum(-1)


# --------------------------------------------------------------------------- log-prob space
# Signature: f(student_logp, teacher_logp, *, beta, skew, mix) -> per-position values (no T**2 yet).


def _forward_kl(ls: Tensor, lt: Tensor, **_: float) -> Tensor:
    return kl_logprobs(lt, ls)


def _reverse_kl(ls: Tensor, lt: Tensor, **_: float) -> Tensor:
    return kl_logprobs(ls, lt)


def _jsd(ls: Tensor, lt: Tensor, *, beta: float = 0.5, **_: float) -> Tensor:
    if beta <= 0.0:
        return kl_logprobs(lt, ls)
    if beta >= 1.0:
        return kl_logprobs(ls, lt)
    lm = log_mixture(lt, ls, beta)
    return beta * kl_logprobs(lt, lm) + (1.0 - beta) * kl_logprobs(ls, lm)


def _mixed_kl(ls: Tensor, lt: Tensor, *, mix: float = 0.5, **_: float) -> Tensor:
    if mix <= 0.0:  # the endpoints exactly (and one KL instead of two)
        return kl_logprobs(lt, ls)
    if mix >= 1.0:
        return kl_logprobs(ls, lt)
    return (1.0 - mix) * kl_logprobs(lt, ls) + mix * kl_logprobs(ls, lt)


def _symmetric_kl(ls: Tensor, lt: Tensor, **_: float) -> Tensor:
    return 0.5 * (kl_logprobs(lt, ls) + kl_logprobs(ls, lt))


def _tvd(ls: Tensor, lt: Tensor, **_: float) -> Tensor:
    return 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)


def _skew_forward_kl(ls: Tensor, lt: Tensor, *, skew: float = 0.1, **_: float) -> Tensor:
    return kl_logprobs(lt, log_mixture(lt, ls, skew))


def _skew_reverse_kl(ls: Tensor, lt: Tensor, *, skew: float = 0.1, **_: float) -> Tensor:
    return kl_logprobs(ls, log_mixture(ls, lt, skew))


def _soft_ce(ls: Tensor, lt: Tensor, **_: float) -> Tensor:
    return -(lt.exp() * ls).sum(-1)


# --------------------------------------------------------------------------- logit space


def _logit_mse(s: Tensor, t: Tensor) -> Tensor:
    return (s - t).pow(2).mean(-1)


def _logit_cosine(s: Tensor, t: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Divergence:
    """One registered divergence: works on log-probs (softened) or on raw logits, never both."""

    name: str
    on_logprobs: Callable[..., Tensor] | None = None
    on_logits: Callable[[Tensor, Tensor], Tensor] | None = None
    temperature_squared: bool = True

    @property
    def supports_topk(self) -> bool:
        return self.on_logprobs is not None


DIVERGENCES: Registry[Divergence] = Registry("loss fn")
for _d in (
    Divergence("kl", on_logprobs=_forward_kl),
    Divergence("reverse_kl", on_logprobs=_reverse_kl),
    Divergence("jsd", on_logprobs=_jsd),
    Divergence("symmetric_kl", on_logprobs=_symmetric_kl),
    Divergence("mixed_kl", on_logprobs=_mixed_kl),
    Divergence("tvd", on_logprobs=_tvd, temperature_squared=False),
    Divergence("skew_kl", on_logprobs=_skew_forward_kl),
    Divergence("skew_reverse_kl", on_logprobs=_skew_reverse_kl),
    Divergence("ce", on_logprobs=_soft_ce),
    Divergence("mse", on_logits=_logit_mse, temperature_squared=False),
    Divergence("cosine", on_logits=_logit_cosine, temperature_squared=False),
):
    DIVERGENCES.register(_d.name, _d)


def divergence_from_logprobs(
    name: str,
    student_logp: Tensor,
    teacher_logp: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    mix: float = 0.5,
) -> Tensor:
    """Apply divergence ``name`` to already-softened log-probs (top-k path); adds the ``T**2`` factor."""
    d = DIVERGENCES.get(name)
    if d.on_logprobs is None:
        valid = [n for n in DIVERGENCES if DIVERGENCES.get(n).supports_topk]
        raise ValueError(
            f"loss fn {name!r} compares raw logits and needs the teacher's full logits, not top-k "
            f"log-probs; fns that work with a top-k teacher: {', '.join(valid)}"
        )
    values = d.on_logprobs(student_logp, teacher_logp, beta=beta, skew=skew, mix=mix)
    return values * temperature**2 if d.temperature_squared else values


def divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    mix: float = 0.5,
) -> Tensor:
    """Per-position divergence ``name`` between full logits ``[..., V]`` -> ``[...]`` (float32)."""
    return divergence_and_target(name, student_logits, teacher_logits, temperature=temperature, beta=beta,
                                 skew=skew, mix=mix)[0]


def divergence_and_target(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    mix: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """:func:`divergence` and the teacher's softened log-probs (detached), so a caller that also wants the
    target (e.g. its entropy) does not soften the full ``[..., V]`` teacher logits a second time."""
    d = DIVERGENCES.get(name)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; response losses need one shared vocabulary"
        )
    if d.on_logits is not None:
        with torch.no_grad():
            target = soften(teacher_logits.detach(), temperature)
        return d.on_logits(floor_logits(student_logits), floor_logits(teacher_logits)), target
    ls, lt = soften(student_logits, temperature), soften(teacher_logits, temperature)
    values = divergence_from_logprobs(name, ls, lt, temperature=temperature, beta=beta, skew=skew, mix=mix)
    return values, lt.detach()


# --------------------------------------------------------------------------- named shortcuts


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 KL(p_t || p_s)``: mass-covering; the classic Hinton KD term."""
    return divergence("kl", student_logits, teacher_logits, temperature=temperature)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 KL(p_s || p_t)``: mode-seeking (MiniLLM-style)."""
    return divergence("reverse_kl", student_logits, teacher_logits, temperature=temperature)


def generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """``T^2 JSD_beta`` with TRL GKD's convention (beta=0 forward KL, beta=1 reverse KL)."""
    return divergence("jsd", student_logits, teacher_logits, temperature=temperature, beta=beta)


def symmetric_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 (KL(p_t||p_s) + KL(p_s||p_t)) / 2``."""
    return divergence("symmetric_kl", student_logits, teacher_logits, temperature=temperature)


def mixed_kl(student_logits: Tensor, teacher_logits: Tensor, mix: float = 0.5, temperature: float = 1.0) -> Tensor:
    """``T^2 ((1 - mix) KL(p_t||p_s) + mix KL(p_s||p_t))``: mix 0 forward KL, 1 reverse KL."""
    return divergence("mixed_kl", student_logits, teacher_logits, temperature=temperature, mix=mix)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``0.5 * sum |p_t - p_s|`` in [0, 1]; not scaled by ``T^2``."""
    return divergence("tvd", student_logits, teacher_logits, temperature=temperature)


def skew_forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, skew: float = 0.1, temperature: float = 1.0
) -> Tensor:
    """DistiLLM skew KL: ``T^2 KL(p_t || skew p_t + (1-skew) p_s)``; bounded, skew=0 is forward KL."""
    return divergence("skew_kl", student_logits, teacher_logits, temperature=temperature, skew=skew)


def skew_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, skew: float = 0.1, temperature: float = 1.0
) -> Tensor:
    """DistiLLM skew reverse KL: ``T^2 KL(p_s || skew p_s + (1-skew) p_t)``."""
    return divergence("skew_reverse_kl", student_logits, teacher_logits, temperature=temperature, skew=skew)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 H(p_t, p_s) = T^2 (KL(p_t||p_s) + H(p_t))``: same student gradient as forward KL."""
    return divergence("ce", student_logits, teacher_logits, temperature=temperature)


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean over classes of the squared logit difference (raw logits, temperature-free)."""
    return divergence("mse", student_logits, teacher_logits)


def logit_cosine(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``1 - cos(z_s, z_t)`` over the class dim (raw logits, temperature-free)."""
    return divergence("cosine", student_logits, teacher_logits)


# --------------------------------------------------------------------------- sparse (top-k) teacher


def topk_logprobs(
    student_logits: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    *,
    temperature: float = 1.0,
    tail: str = "renormalize",
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs on the teacher's top-k support, ready for any log-prob divergence.

    ``teacher_logprobs`` are the teacher's *untempered* (T = 1) log-probs at ``teacher_ids`` ``[..., k]``,
    as a cache or an OpenAI-compatible server returns them.

    * ``renormalize``: both distributions are restricted to the k ids and renormalised there; the teacher
      is softened as ``softmax(logprobs / T)`` over k, the student as ``softmax(logits[ids] / T)``.
      Mass outside the top-k is ignored. With k = V this equals the dense loss exactly.
    * ``bucket``: a (k+1)-th outcome holds the remaining mass. Student: its exact softened mass on the
      k ids plus the exact softened tail (logsumexp of the other ids). Teacher: the top-k shape is
      softened as above and scaled to the kept T = 1 mass; the tail keeps its T = 1 mass (the teacher's
      tail at temperature T is unknowable from top-k alone, so this is exact only at T = 1). Tail log-masses
      are floored at ``LOG_FLOOR`` so an empty tail stays finite, and a teacher tail below ``TAIL_EPS``
      counts as empty; with k = V it equals the dense loss.
    """
    if tail not in TOPK_TAILS:
        raise ValueError(f"unknown topk_tail {tail!r}; valid: {', '.join(TOPK_TAILS)}")
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"top-k ids {tuple(teacher_ids.shape)} and logprobs {tuple(teacher_logprobs.shape)} differ"
        )
    t_lp = upcast(teacher_logprobs).clamp_min(NEG_LOGIT)
    t_top = torch.log_softmax(t_lp / temperature, dim=-1)
    ids = teacher_ids.long()
    if tail == "renormalize":
        s = upcast(student_logits).gather(-1, ids)
        return soften(s, temperature), t_top
    s_full = soften(student_logits, temperature)
    s_top = s_full.gather(-1, ids)
    outside = torch.ones_like(s_full, dtype=torch.bool).scatter_(-1, ids, False)
    fill = s_full.new_full((), 2 * LOG_FLOOR - math.log(s_full.shape[-1]))  # finite, below the floor
    s_tail = torch.logsumexp(torch.where(outside, s_full, fill), dim=-1, keepdim=True)
    s_tail = s_tail.clamp_min(LOG_FLOOR)
    log_kept = torch.logsumexp(t_lp, dim=-1, keepdim=True).clamp_max(0.0)
    t_mass = -torch.expm1(log_kept)  # T = 1 tail mass; below TAIL_EPS it is float32 rounding noise
    t_tail = torch.log(torch.where(t_mass > TAIL_EPS, t_mass, t_mass.new_full((), math.exp(LOG_FLOOR))))
    return torch.cat([s_top, s_tail], -1), torch.cat([t_top + log_kept, t_tail], -1)
