"""The KD objective logs the mean entropy of the teacher's temperature-softened targets, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from farlab.losses.base import DistillBatch, ModelView, TopK
from farlab.losses.objective import DistillationObjective
from farlab.losses.response import ResponseLoss


def _h(*probs: float) -> float:
    """Entropy in nats of one distribution, written out."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def test_classifier_targets_entropy_by_hand_and_in_the_objective_parts():
    # T = 2: row 1 logits [2, 0] -> softmax([1, 0]); row 2 [0, 0] -> uniform (ln 2).
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.5, -0.5], [1.0, 0.0]], requires_grad=True)
    p = math.e / (math.e + 1)
    expected = (_h(p, 1 - p) + math.log(2)) / 2
    loss = ResponseLoss("kl", temperature=2.0)
    batch = DistillBatch(ModelView(logits=student), ModelView(logits=teacher), token_mask=torch.ones(2, 1))
    objective = DistillationObjective({"response": loss}, {"response": 1.0}, alpha=1.0)
    total, parts = objective(batch, ce=torch.tensor(0.3))
    assert parts["response/teacher_entropy"] == pytest.approx(expected, abs=1e-6)
    assert not loss.teacher_entropy.requires_grad  # a log value, never in the graph
    total.backward()  # the loss itself still trains the student
    assert student.grad is not None


def test_lm_targets_entropy_counts_only_response_positions():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 5)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    loss = ResponseLoss("kl", temperature=1.5)
    loss(DistillBatch(ModelView(logits=torch.randn(2, 3, 5)), ModelView(logits=teacher),
                      token_mask=torch.ones(2, 3), response_mask=mask))
    soft = torch.softmax(teacher / 1.5, dim=-1)
    kept = [scipy_entropy(soft[b, t].numpy()) for b in range(2) for t in range(3) if mask[b, t]]
    assert float(loss.teacher_entropy) == pytest.approx(sum(kept) / len(kept), abs=1e-5)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_topk_targets_entropy_is_that_of_the_distribution_the_loss_uses(tail):
    # Teacher T=1 log-probs of its top-2 ids: 0.6 and 0.3 (tail mass 0.1); T = 1 keeps the bucket exact.
    ids = torch.tensor([[0, 2]])
    logprobs = torch.log(torch.tensor([[0.6, 0.3]]))
    loss = ResponseLoss("kl", temperature=1.0, topk_tail=tail)
    loss(DistillBatch(ModelView(logits=torch.zeros(1, 4)), ModelView(topk=TopK(ids, logprobs)),
                      token_mask=torch.ones(1, 1)))
    expected = _h(2 / 3, 1 / 3) if tail == "renormalize" else _h(0.6, 0.3, 0.1)
    assert float(loss.teacher_entropy) == pytest.approx(expected, abs=1e-5)


def test_chunked_lm_path_gives_the_dense_entropy():
    torch.manual_seed(1)
    hidden, head = torch.randn(2, 4, 6), torch.nn.Linear(6, 7)
    teacher = torch.randn(2, 4, 7)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    dense, chunked = ResponseLoss("kl"), ResponseLoss("kl", chunk_size=2)
    dense(DistillBatch(ModelView(logits=head(hidden)), ModelView(logits=teacher), torch.ones(2, 4), mask))
    chunked(DistillBatch(ModelView(final_hidden=hidden, lm_head=head), ModelView(logits=teacher),
                         torch.ones(2, 4), mask))
    assert float(chunked.teacher_entropy) == pytest.approx(float(dense.teacher_entropy), abs=1e-6)
